# GPU production image for the recommendation server.
# Not built in CI/dev here (no Docker engine available); kept minimal on purpose.
# Triton 2.51 = the same server version as the embedded CPU server used in development.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/recserve

# Dependencies first so code edits don't invalidate the pip layer. The torch CPU
# pin is fine here: torch is only used to export/build the model repository;
# GPU inference runs inside Triton's own backends. Caveat: python3 in this image
# is 3.10 while requirements.txt is pinned for 3.11 (scipy 1.17 needs >= 3.11), so
# the planned requirements-gpu.txt must carry 3.10-compatible pins.
COPY requirements.txt .
RUN python3 -m pip install --no-cache-dir -r requirements.txt

# Add a .dockerignore (.venv/, artifacts/, loadtests/results/) to keep the context small.
COPY . .
RUN python3 -m exporters.build_repository --out model_repository

# 8000 HTTP, 8001 gRPC (KServe v2), 8002 Prometheus metrics.
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/opt/recserve/model_repository"]
