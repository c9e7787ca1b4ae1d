r"""Serves the in-browser de-occlusion page (web/) on this machine.

    python -m deocc_jax.web --model=deocc.onnx [--port=8000]
    python -m deocc_jax.web --model=deocc.onnx --host=0.0.0.0   # reachable from the network

What the server hands out and refuses, and how the page is built: `deocc_jax/serving/web_lib.py`.
"""

from __future__ import annotations

import sys

from absl import flags

from deocc_jax import errors
from deocc_jax.serving import web_lib

_MODEL = flags.DEFINE_string("model", None, "ONNX model (from `deocc_jax.export --format=onnx`).",
                             required=True)
_PORT = flags.DEFINE_integer("port", 8000, "TCP port; 0 picks a free one.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. Anything but a loopback "
                            "address makes the page (and the model) reachable from the network.")
_LANDMARKER_MODEL = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task "
                                        "(default: $DEOCC_ASSETS_DIR or the user cache).")
_FULL_RANGE_MODEL = flags.DEFINE_string(
    "full_range_model", None, "Path of face_detection_full_range.tflite, the detector that finds "
    "the faces the landmarker misses (default: $DEOCC_ASSETS_DIR or the user cache).")
_WEB_DIR = flags.DEFINE_string("web_dir", web_lib.WEB_DIR, "The web/ folder (its dist/ is served).")
_LOG_REQUESTS = flags.DEFINE_bool("log_requests", False, "Log every request to stderr.")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    server = web_lib.PageServer(_MODEL.value, host=_HOST.value, port=_PORT.value,
                                landmarker_model=_LANDMARKER_MODEL.value,
                                full_range_model=_FULL_RANGE_MODEL.value, web_dir=_WEB_DIR.value,
                                verbose=_LOG_REQUESTS.value)
    info = server.page_config["model"]
    print(f"deocc web page for {info['name']} ({info['resolution']} px): {server.url}", flush=True)
    if not web_lib.is_loopback(_HOST.value):
        print(f"warning: listening on {_HOST.value}: other machines can load the page and the model. "
              "Browsers allow the camera only on localhost or over https; photos still work. "
              "Frames are processed in each visitor's own browser.", file=sys.stderr, flush=True)
    print("everything runs in the browser; press Ctrl+C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run():
    """Console-script entry point (`deocc-web`)."""
    errors.run(main)


if __name__ == "__main__":
    run()
