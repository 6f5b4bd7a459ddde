# One image for the API, the workers and the one-shot bucket bootstrap.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md minio-notify.json ./
COPY api ./api
COPY functions ./functions
COPY infra ./infra
COPY models ./models
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "api"]
