# The deocc HTTP service (python -m deocc_jax.serve) with the shipped model. Build from the repo root:
#   docker build -t deocc-serve .
#   docker run -p 8080:8080 -v $PWD/../shared/models:/models:ro deocc-serve
# MediaPipe's face_landmarker.task is not in the image: mount the folder holding it at
# $DEOCC_ASSETS_DIR (/models). See docs/serving.md; deploy/k8s.yaml runs it on Kubernetes.
# BASE=apache/beam_python3.11_sdk:2.77.0 makes the same image a Dataflow SDK container (infer_beam).
ARG BASE=python:3.11-slim
FROM ${BASE}

# OpenCV (mediapipe's opencv-contrib-python) loads libGL and GLib when imported.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY deocc_jax ./deocc_jax
COPY configs ./configs
COPY pretrained ./pretrained
RUN pip install --no-cache-dir --no-deps . && useradd --create-home --uid 10001 deocc

ENV DEOCC_ASSETS_DIR=/models \
    DEOCC_PRETRAINED_DIR=/app/pretrained \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
USER deocc
EXPOSE 8080
CMD ["deocc-serve", "--host=0.0.0.0", "--port=8080", "--timeout_s=30"]
