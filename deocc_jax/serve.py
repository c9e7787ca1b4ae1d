r"""Serves the whole de-occlusion pipeline over HTTP (Starlette on uvicorn).

    python -m deocc_jax.serve --port=8080                    # the shipped model, 127.0.0.1
    python -m deocc_jax.serve --host=0.0.0.0 --port=8080 --model=exports/deocc --max_batch=16
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' \
        http://127.0.0.1:8080/v1/deocclude -o restored.png

POST /v1/deocclude takes a photo and returns it de-occluded as PNG (header
X-Deocc-Faces); ?mask=true adds the predicted mask (multipart/mixed). GET
/healthz, /readyz and /metrics (Prometheus) are for orchestrators. Face crops of
concurrent requests share model calls (--max_batch, --max_wait_ms). SIGTERM
stops accepting, finishes in-flight requests and exits 0. See docs/serving.md.
"""

import functools
import os

from absl import flags

from deocc_jax import errors
from deocc_jax.artifacts import loading
from deocc_jax.serving import config as config_lib
from deocc_jax.serving import server

_D = config_lib.ServeConfig()
_PORT = flags.DEFINE_integer("port", 8080, "TCP port (0: any free port, printed).", lower_bound=0)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface, "
                            "as in a container).")
_MODEL = flags.DEFINE_string("model", None, "Workdir, pretrained folder, export folder, .onnx or "
                             ".tflite (default: the shipped model in pretrained/).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", f"For workdirs: {loading.CHECKPOINT_CHOICES}.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", _D.max_batch, "Most face crops per model call.")
_MAX_WAIT = flags.DEFINE_float("max_wait_ms", _D.max_wait_ms, "How long the first crop may wait "
                               "for crops of requests still finding faces before the model runs "
                               "(never when there are none).")
_MAX_BODY = flags.DEFINE_float("max_body_mb", _D.max_body_mb, "Largest request body (MiB); "
                               "more: 413.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", _D.max_pixels, "Largest photo (pixels, from its "
                                   "header, before decoding); more: 413.")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", _D.max_queue, "Requests handled at once; more: 503 "
                                  "with Retry-After.")
_TIMEOUT = flags.DEFINE_float("timeout_s", _D.timeout_s, "Per-request deadline; past it: 504.")
_WORKERS = flags.DEFINE_integer("workers", _D.workers, "Threads that decode, find faces, blend and "
                                "encode.")
_MAX_FACES = flags.DEFINE_integer("max_faces", _D.max_faces, "Most faces restored per photo.")
_MIN_CONF = flags.DEFINE_float("min_confidence", _D.min_confidence,
                               "MediaPipe detection confidence threshold.")
_MIN_FACE = flags.DEFINE_float("min_face_px", _D.min_face_px, "Smallest face restored (its box's "
                               "longer side, pixels), as infer's flag.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task "
                                  "(default: $DEOCC_ASSETS_DIR, then the cache).")
_COMPRESS_PNG = flags.DEFINE_bool("compress_png", _D.compress_png, "Compress the response PNG as "
                                   "infer writes it (about 2.3x smaller, ~15 ms more CPU for "
                                   "640x480); default: stored, the same pixels.")
_ACCESS_LOG = flags.DEFINE_bool("access_log", True, "Log one line per request.")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    config = config_lib.ServeConfig(
        max_batch=_MAX_BATCH.value, max_wait_ms=_MAX_WAIT.value, max_body_mb=_MAX_BODY.value,
        max_pixels=_MAX_PIXELS.value, max_queue=_MAX_QUEUE.value, timeout_s=_TIMEOUT.value,
        workers=_WORKERS.value, max_faces=_MAX_FACES.value, min_confidence=_MIN_CONF.value,
        min_face_px=_MIN_FACE.value, landmarker_model=_LANDMARKER.value,
        compress_png=_COMPRESS_PNG.value)
    server.serve(_MODEL.value, config, host=_HOST.value, port=_PORT.value,
                 checkpoint=loading.parse_checkpoint(_CHECKPOINT.value),
                 access_log=_ACCESS_LOG.value, log=functools.partial(print, flush=True))


def run():
    """Console-script entry point (`deocc-serve`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)


if __name__ == "__main__":
    run()
