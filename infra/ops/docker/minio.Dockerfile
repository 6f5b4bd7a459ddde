# MinIO built from the pinned source (infra/ops/install.py holds the same pin): community
# binaries and images are no longer published, so production builds what CI builds.
# Commits rather than release tags: the module proxy serves only these (see infra/ops/install.py).
FROM golang:1.26-bookworm AS build
ARG MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
ARG MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
RUN GOTOOLCHAIN=local GOBIN=/out go install github.com/minio/minio@${MINIO_VERSION} \
 && GOTOOLCHAIN=local GOBIN=/out go install github.com/minio/mc@${MC_VERSION}

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/minio /out/mc /usr/local/bin/
EXPOSE 9000
ENTRYPOINT ["minio"]
