# optiserve on CPU. Build: docker build -t optiserve .   Run: docker run --shm-size=1g -p 8000:8000 -v optiserve-store:/data optiserve
# --shm-size: tensors of 256 KiB and up cross between the HTTP and inference processes through
# /dev/shm, which Docker makes 64 MiB by default. Give it the large tensors you expect in flight at
# once (requests and answers); the server uses at most half (OPTISERVE_SHM_BUDGET_BYTES), and past
# that answers 503 shm_full. An `optiserve worker` container needs no more than the default.
# Scale-out: the same image runs `serve --no-jobs` (API replicas) and `worker` on a shared store; see deploy/README.md.
# A smaller image: pass PyTorch's CPU-only wheel index as --build-arg TORCH_INDEX_URL=...; by default
# pip takes torch==2.13.0 from PyPI, which is the larger CUDA-enabled build (it runs on CPU too).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OPTISERVE_HOST=0.0.0.0 \
    OPTISERVE_PORT=8000 \
    OPTISERVE_STORE=/data/store

WORKDIR /app

# libseccomp: the seccomp filter of every process that runs model code (server/jobs/seccomp_filter.py).
RUN apt-get update && apt-get install -y --no-install-recommends libseccomp2 && rm -rf /var/lib/apt/lists/*

# torch alone and first: it is by far the largest layer and changes least often.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY optimizer_pipeline ./optimizer_pipeline
COPY server ./server
# clients/: the client's own distribution (with wire/), which the server depends on; installed in the same command.
COPY clients ./clients
# [shared]: the same image runs the embedded store or, as API replicas and job workers, a shared one (deploy/k8s/).
RUN pip install ./clients ".[shared]" \
    && useradd --create-home --uid 10001 optiserve \
    && mkdir -p /data/store \
    && chown -R optiserve /data

USER optiserve
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"

# Flags override the OPTISERVE_* environment above.
ENTRYPOINT ["optiserve"]
CMD ["serve"]
