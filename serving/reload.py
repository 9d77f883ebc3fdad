"""Hot reload: load models again from the repository while the server keeps answering.

After new artifacts are written into a model's version folder (retrained weights, new campaigns' weights, a
rebuilt index) or into a new version folder (`<model>/2/`), this makes the running server load them. The old
instance keeps serving until the new one is ready, so no request fails; a version that fails to load leaves
the old one serving and the reason is printed (exit status 1).

    python -m serving.reload --url 127.0.0.1:8001 --admin-key-file KEY_FILE grace_retrieve score_ads

The server must run under `serving.launcher` (explicit model control); the admin key is the launcher's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.launcher import ADMIN_KEY_ENV, GRPC_ADMIN_HEADER, reload_model


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.reload", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="models to load again, in this order")
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument("--admin-key-file", type=Path, help=f"file holding the admin key (or set ${ADMIN_KEY_ENV})")
    parser.add_argument("--tls-ca", type=Path, help="PEM certificate to verify a TLS server with")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each load")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    key = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if not key and args.admin_key_file is not None:
        try:
            key = args.admin_key_file.read_text().strip()
        except OSError as exc:
            print(f"error: cannot read the admin key: {exc}", file=sys.stderr)
            return 2
    headers = {GRPC_ADMIN_HEADER: key} if key else {}
    tls = {"ssl": True, "root_certificates": str(args.tls_ca)} if args.tls_ca else {}
    client = grpcclient.InferenceServerClient(args.url, **tls)
    failed = 0
    try:
        for model in args.models:
            started = time.monotonic()
            try:
                reload_model(client, model, headers, timeout_s=args.timeout)
            except InferenceServerException as exc:
                failed += 1
                print(f"{model}: not reloaded, the running version keeps serving: {exc.message()}", file=sys.stderr)
                continue
            print(f"{model}: reloaded in {time.monotonic() - started:.1f} s")
    finally:
        client.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
