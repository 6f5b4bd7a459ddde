# The package is built once into a wheel; the images install it, so nothing at run time
# comes from a source tree. Relative config paths (models/, minio-notify.json) are /app's.
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY functions ./functions
COPY infra ./infra
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# The API and the one-shot bucket bootstrap: no model runtime, no OpenCV.
FROM python:3.11-slim-bookworm AS app
WORKDIR /app
COPY --from=wheel /wheels /wheels
# The dependencies from the hashed lock (requirements/lock.sh): the wheel then finds them all.
COPY requirements/app.lock requirements/worker.lock /requirements/
RUN pip install --no-cache-dir --require-hashes -r /requirements/app.lock
RUN pip install --no-cache-dir /wheels/maskflow-*.whl
COPY minio-notify.json ./
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "maskflow.api"]

# Workers: the same package plus ONNX Runtime, OpenCV, numpy and the models.
FROM app AS worker
RUN pip install --no-cache-dir --require-hashes -r /requirements/worker.lock
RUN pip install --no-cache-dir "$(ls /wheels/maskflow-*.whl)[worker]"
COPY models ./models
CMD ["python", "-m", "maskflow.functions"]
