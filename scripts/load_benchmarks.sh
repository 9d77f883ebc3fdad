#!/usr/bin/env bash
# The load-test figures of BENCHMARKS.md, end to end: serve REPOSITORY with the launcher's defaults (nginx proxy,
# admin key, watchdog), run locust at concurrency 1 and 4, the concurrency-1 latency of score_ads and clip_embed,
# then the bounded soak (on a server of its own, to read its memory); each writes its result file into OUT, and
# BENCHMARKS.md is re-rendered from docs/results/. Budgets: DURATION (s per locust run), REPEAT, REQUESTS (per
# latency run), SOAK_S, SOAK_RATE. tests/loadtests/test_load_benchmarks.py runs this chain on a tiny budget.
#   ./scripts/load_benchmarks.sh [REPOSITORY] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
REPOSITORY=${1:-model_repository}
OUT=${2:-docs/results}
DURATION=${DURATION:-20} REPEAT=${REPEAT:-3} REQUESTS=${REQUESTS:-2000} SOAK_S=${SOAK_S:-300} SOAK_RATE=${SOAK_RATE:-25}
. .venv/bin/activate
mkdir -p "$OUT"
read -r GRPC HTTP METRICS < <(python -c "from serving.launcher import free_ports; print(*free_ports(3))")
LOG=$(mktemp)
python -m serving.launcher --model-repository "$REPOSITORY" --grpc-port "$GRPC" --http-port "$HTTP" \
  --metrics-port "$METRICS" > "$LOG" 2>&1 &
SERVER=$!
stop_server() { kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -f "$LOG"; }
trap stop_server EXIT
until grep -q "^try: " "$LOG"; do
  kill -0 $SERVER 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 1
done
HOST=127.0.0.1:$GRPC
DIRECT=$(sed -n 's/.*behind the proxy, tritonserver itself: gRPC //p' "$LOG")
python -m loadtests.run --host "$HOST" --users 1 --duration "$DURATION" --repeat "$REPEAT" \
  --csv-prefix "$(mktemp -d)/c1" --json-out "$OUT/load_recommend_c1.json"
python -m loadtests.run --host "$HOST" --users 4 --duration "$DURATION" --repeat "$REPEAT" \
  --csv-prefix "$(mktemp -d)/c4" --json-out "$OUT/load_recommend_c4.json"
python -m loadtests.latency --host "$HOST" --model score_ads --campaigns 100 --requests "$REQUESTS" \
  --repeat "$REPEAT" --label "through the proxy" --json-out "$OUT/latency_score_ads.json"
# The proxy's cost, side by side: the same requests straight to tritonserver's own port.
python -m loadtests.latency --host "$DIRECT" --model score_ads --campaigns 100 --requests "$REQUESTS" \
  --repeat "$REPEAT" --label "straight to tritonserver" --json-out "$OUT/latency_score_ads_direct.json"
python -m loadtests.latency --host "$HOST" --model clip_embed --rows 1 --requests "$REQUESTS" \
  --repeat "$REPEAT" --json-out "$OUT/latency_clip_embed.json"
stop_server
python -m loadtests.soak --repository "$REPOSITORY" --rate "$SOAK_RATE" --duration "$SOAK_S" \
  --window "$(( SOAK_S >= 300 ? 60 : (SOAK_S + 1) / 2 ))" --out "$OUT/soak.json"
if [ "$OUT" = docs/results ]; then python -m evaluation.report; fi
