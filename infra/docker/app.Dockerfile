# The API and the one-shot bucket bootstrap: no model runtime, no OpenCV.
FROM python:3.11-slim-bookworm AS app
WORKDIR /app
COPY pyproject.toml README.md minio-notify.json ./
COPY api ./api
COPY functions ./functions
COPY infra ./infra
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "api"]

# Workers: the same code plus ONNX Runtime, OpenCV, numpy and the models.
FROM app AS worker
COPY models ./models
RUN pip install --no-cache-dir ".[worker]"
CMD ["python", "-m", "functions"]
