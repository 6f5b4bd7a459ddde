# MinIO built from the pinned source (infra/install.py holds the same pin): community
# binaries and images are no longer published, so production builds what CI builds.
FROM golang:1.24-bookworm AS build
ARG MINIO_VERSION=v0.0.0-20251015172955-9e49d5e7a648
ARG MC_VERSION=v0.0.0-20250813083541-7394ce0dd2a8
RUN GOTOOLCHAIN=local GOBIN=/out go install github.com/minio/minio@${MINIO_VERSION} \
 && GOTOOLCHAIN=local GOBIN=/out go install github.com/minio/mc@${MC_VERSION}

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/minio /out/mc /usr/local/bin/
EXPOSE 9000
ENTRYPOINT ["minio"]
