# MinIO and mc from the pinned source (infra/ops/install.py holds the same pin): community
# binaries and images are no longer published, so production builds what CI builds.
# Commits rather than release tags: the module proxy serves only these (see infra/ops/install.py).
#
# MINIO_BINARIES picks where the two binaries come from: the `source` stage below (default), or
# an image that holds /out/minio and /out/mc built elsewhere from the same pins (tests/containers
# passes one made from ~/.cache/maskflow/bin). Needs BuildKit, which skips the unused stage.
ARG GO_IMAGE=golang:1.26-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG MINIO_BINARIES=source

FROM ${GO_IMAGE} AS source
ARG MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
ARG MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
RUN GOTOOLCHAIN=local GOBIN=/out go install github.com/minio/minio@${MINIO_VERSION} \
 && GOTOOLCHAIN=local GOBIN=/out go install github.com/minio/mc@${MC_VERSION}

FROM ${MINIO_BINARIES} AS binaries

FROM ${DEBIAN_IMAGE}
# curl: the compose healthcheck.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10002 minio \
 && useradd --system --uid 10002 --gid 10002 --no-create-home minio \
 && mkdir /data /events && chown minio:minio /data /events
COPY --from=binaries /out/minio /out/mc /usr/local/bin/
USER minio
EXPOSE 9000
ENTRYPOINT ["minio"]
