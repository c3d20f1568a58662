# The pipeline's image: one image for every process (worker, sink, ingest, topic creation,
# the demo emulator and feed); the command picks the process. Built by docker-compose.yml
# (`build: .`) and pushed for k8s/ (kustomize `images:` sets the name and tag).
#
#   docker build -t position-pipeline:0.1.0 .
#
# Stage 1 compiles nothing it does not have to (every pinned dependency ships a manylinux
# wheel) but has the tool chain for the ones that might not on another platform. Stage 2 is
# the slim runtime: the virtualenv and nothing else, no compiler, running as uid 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from the lock alone: this layer survives every source change.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt

# The project itself, non-editable (package data: schemas/*.avsc, schemas/history,
# sinks/migrations/*.sql, stack/kafka files, declared in pyproject.toml).
COPY README.md ./
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
COPY stack ./stack
COPY emulator ./emulator
RUN pip install --no-deps -c constraints.txt . \
    && pip check \
    && python -m compileall -q /opt/venv


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="position-pipeline" \
      org.opencontainers.image.description="Race-free crypto-futures position pipeline (Kafka/Faust stream processing)"

RUN groupadd --system --gid 10001 pipeline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/pipeline --create-home \
        --shell /usr/sbin/nologin pipeline \
    && mkdir -p /var/lib/position-pipeline /tmp/heartbeat \
    && chown 10001:10001 /var/lib/position-pipeline /tmp/heartbeat

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPELINE_DATA_DIR=/var/lib/position-pipeline

WORKDIR /app
USER 10001:10001
# /var/lib/position-pipeline holds the worker's table store (rocksdb). Mount a persistent
# volume there (compose: worker-data; k8s: the StatefulSet's claim) so a restart recovers
# from the local store plus the changelog's tail instead of the whole changelog. No VOLUME
# instruction: it would give every container of the image, sink and ingest included, an
# anonymous volume.
EXPOSE 6066

# Only the worker serves HTTP; compose gives the other services their own healthcheck and
# Kubernetes ignores this one (it has its probes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('WEB_PORT', '6066'), timeout=4)"]

CMD ["python", "-m", "streams", "worker", "--loglevel", "info"]
