# GPU production image: the gpu rendering of the model repository (serving/configs.py: the ONNX graphs as
# native onnxruntime-backend models on the GPU with the TensorRT execution provider, the python steps on the
# CPU calling them through BLS) on NGC's tritonserver. The CPU image, without NGC: Dockerfile.cpu.
# Cannot be built here (no Docker engine on these machines); linted by tests/deploy/test_dockerfile.py.
# Stage 1 builds the model repository (simulate, train, export) with the pinned Python 3.11 toolchain and
# renders it for the GPU; stage 2 serves it with Triton 2.51 (24.10), the same server version as the CPU image.
FROM python:3.11-slim AS build
# Real product images for the CLIP training of the default build.
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps -e . && python -m exporters.build_repository --out model_repository \
    && python -m serving.configs --target gpu --from-repository model_repository --out model_repository_gpu

FROM nvcr.io/nvidia/tritonserver:24.10-py3
# nginx-light: the launcher's proxy (request size limit, client timeouts, TLS on gRPC and HTTP).
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/recserve
# The container's python backend runs Python 3.10: its own pins, serving-only (no torch).
COPY requirements-serving.txt .
RUN python3 -m pip install --no-cache-dir -r requirements-serving.txt
# The served steps import only the torch-free serving room (serving/); models/ and exporters/ stay in stage 1.
COPY --from=build /src/serving ./serving
COPY --from=build /src/model_repository_gpu ./model_repository
ENV PYTHONPATH=/opt/recserve
# The launcher runs the container's tritonserver with the same defaults as everywhere: admin APIs
# (model-repository, shared-memory, logging, trace) closed without the key, explicit model control, the stub
# watchdog. The key: $RECSERVE_ADMIN_KEY, or the file below (mount a secret there; created with a random key,
# mode 0600, when absent). TLS: add --tls-cert/--tls-key; extra tritonserver flags go after `--`.
# TensorRT engines are cached in /tmp (trt_engine_cache_path), writable for the non-root user.
RUN useradd --system --home /opt/recserve recserve && mkdir -p /run/recserve && chown recserve /run/recserve
USER recserve
# 8000 HTTP, 8001 gRPC (KServe v2), 8002 Prometheus metrics.
EXPOSE 8000 8001 8002
ENTRYPOINT ["python3", "-m", "serving.launcher", "--tritonserver-home=/opt/tritonserver", \
            "--model-repository=/opt/recserve/model_repository", "--host=0.0.0.0", \
            "--admin-key-file=/run/recserve/admin_key"]
