r"""The in-browser de-occlusion page's HTTP server (the library of `python -m deocc_jax.web`).

The page runs everything in the browser: MediaPipe's face landmarker, the
full-range face detector and landmark model that find the faces it misses
(`web_models`, as the Python pipeline does), deocc's alignment, the ONNX model
(onnxruntime-web, WebAssembly or WebGPU) and the blending. This server only
hands out files: the built page (web/dist/), the ONNX model given with
--model, face_landmarker.task and the two face models converted to ONNX. It
answers GET and HEAD only, so nothing can be uploaded to it, and its Content-Security-Policy
lets the page talk to no other server.

The page is built once with `cd web && npm ci && npm run build` (see
docs/web.md); a missing or stale build is reported with that command.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import ipaddress
import json
import os
import posixpath
import shutil
import sys
import urllib.parse
from typing import Any

from deocc_jax import errors
from deocc_jax.faces import blazeface
from deocc_jax.io import assets
from deocc_jax.io import portable
from deocc_jax.serving import web_models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # deocc_jax/serving/
WEB_DIR = os.path.join(REPO, "web")
BUILD_COMMAND = "cd web && npm ci && npm run build"

# URL paths of the model files (the page reads them from config.json).
MODEL_URL = "models/model.onnx"
LANDMARKER_URL = "models/face_landmarker.task"

# Same-origin only. 'wasm-unsafe-eval' lets the page compile WebAssembly;
# cross-origin isolation (COOP + COEP) lets onnxruntime-web use threads.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
        "connect-src 'self' blob: data:; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm",
    ".onnx": "application/octet-stream", ".task": "application/octet-stream",
}


# ----------------------------------------------------------------------------- checks


def source_hash(web_dir: str) -> str:
    """sha256 of the page's inputs, computed exactly as web/build.mjs records it."""
    h = hashlib.sha256()
    src = sorted(os.listdir(os.path.join(web_dir, "src")))
    for name in ["build.mjs", "package.json", "package-lock.json"] + [f"src/{n}" for n in src]:
        h.update(name.encode() + b"\0")
        with open(os.path.join(web_dir, name), "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()


def check_build(web_dir: str = WEB_DIR) -> str:
    """The built page's folder (web_dir/dist), checked to be present and current.

    Raises:
      errors.InputNotFoundError: no build, or one made from other sources.
    """
    dist = os.path.join(web_dir, "dist")
    info_path = os.path.join(dist, "build.json")
    if not os.path.isfile(info_path):
        raise errors.InputNotFoundError(
            f"the web page is not built ({info_path} is missing); build it with: {BUILD_COMMAND}")
    with open(info_path) as f:
        info = json.load(f)
    if info.get("source_sha256") != source_hash(web_dir):
        raise errors.InputNotFoundError(
            f"the web page in {dist} was built from other sources than {web_dir}/src; "
            f"rebuild it with: {BUILD_COMMAND}")
    missing = [p for p in ["index.html", "app.js"] + info.get("vendor", [])
               if not os.path.isfile(os.path.join(dist, p))]
    if missing:
        raise errors.InputNotFoundError(
            f"the web build in {dist} lacks {missing}; rebuild it with: {BUILD_COMMAND}")
    return dist


def model_info(path: str) -> dict[str, Any]:
    """Checks that an ONNX file has deocc's blind signature; returns what the page needs.

    Args:
      path: the .onnx file.

    Returns:
      {"name", "resolution", "bytes"}.

    Raises:
      errors.InputNotFoundError: no such file.
      errors.InvalidInputError: not an ONNX model with input `images` uint8
        [B, R, R, 3] and outputs `deoccluded` uint8 and `mask` float32.
    """
    import onnx  # heavy; only the server needs it

    if not os.path.isfile(path):
        raise errors.InputNotFoundError(f"--model {path!r} does not exist (an .onnx file from "
                                        "`python -m deocc_jax.export --format=onnx`)")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... for a bad file
        raise errors.InvalidInputError(f"--model {path}: not an ONNX model ({e})") from e
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    images, deoccluded, mask = portable.INPUT_IMAGES, portable.OUTPUT_IMAGES, portable.OUTPUT_MASK
    want = f"input `{images}` uint8 [B, R, R, 3], outputs `{deoccluded}` uint8 and `{mask}` float32"
    if portable.INPUT_MASKS in inputs:
        raise errors.InvalidInputError(
            f"--model {path}: a guided model (it needs the occluder mask as input, which a camera "
            "does not have); use a blind model")
    if images not in inputs or not {deoccluded, mask} <= set(outputs):
        raise errors.InvalidInputError(
            f"--model {path}: inputs {sorted(inputs)}, outputs {sorted(outputs)}; expected {want}")
    t = inputs[images].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    types = (t.elem_type, outputs[deoccluded].type.tensor_type.elem_type,
             outputs[mask].type.tensor_type.elem_type)
    if types != (onnx.TensorProto.UINT8, onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT) \
            or len(dims) != 4 or dims[3] != 3:
        names = "/".join(onnx.TensorProto.DataType.Name(x).lower() for x in types)
        raise errors.InvalidInputError(
            f"--model {path}: {images} {dims}, types {images}/{deoccluded}/{mask} {names}; "
            f"expected {want}")
    props = {p.key: p.value for p in model.metadata_props}
    try:
        # deocc_jax.export writes its facts as one JSON object; other graphs may
        # carry just a "resolution" property, or only the input's static shape.
        meta = json.loads(props.get(portable.METADATA_KEY, "{}"))
    except ValueError as e:
        raise errors.InvalidInputError(f"--model {path}: unreadable deocc metadata ({e})") from e
    resolution = int(meta.get("resolution") or props.get("resolution") or dims[1] or 0)
    if meta.get("guided"):
        raise errors.InvalidInputError(f"--model {path}: a guided model; use a blind model")
    if not resolution or dims[1] not in (None, resolution) or dims[2] not in (None, resolution):
        raise errors.InvalidInputError(
            f"--model {path}: crop size unknown or inconsistent (images {dims}, metadata "
            f"resolution {meta.get('resolution', props.get('resolution'))})")
    return {"name": os.path.basename(path), "resolution": resolution,
            "bytes": os.path.getsize(path)}


# ----------------------------------------------------------------------------- server


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the built page, config.json and the two model files."""

    server: "PageServer"
    server_version = "deocc-web"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def log_error(self, format, *args):  # noqa: A002
        # A refused request (400, 404) is one line, whatever --log_requests says.
        super().log_message(format, *args)

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self._respond(head=True)

    def do_GET(self):  # noqa: N802
        self._respond(head=False)

    def _respond(self, head: bool):
        rel = request_path(self.path)
        if rel is None:
            return self.send_error(400, "bad path (not UTF-8, or control characters)")
        if rel == "config.json":
            return self._send_bytes(json.dumps(self.server.page_config).encode(), ".json", head)
        files = {MODEL_URL: self.server.model_path, LANDMARKER_URL: self.server.landmarker_path,
                 web_models.DETECTOR_URL: self.server.face_models.detector,
                 web_models.LANDMARKS_URL: self.server.face_models.landmarks}
        target = files.get(rel) or os.path.join(self.server.dist, *rel.split("/"))
        try:
            # normpath removed "..", so a dist path stays inside dist; check anyway.
            inside = os.path.commonpath([os.path.realpath(target), self.server.dist]) == self.server.dist
            f = open(target, "rb") if os.path.isfile(target) and (rel in files or inside) else None
        except (OSError, ValueError):  # a name too long for the file system, ...
            f = None
        if f is None:
            return self.send_error(404, "not found")
        ext = os.path.splitext(target)[1].lower()
        with f:
            size = os.fstat(f.fileno()).st_size
            self._headers(ext, size)
            if head:
                return
            try:
                shutil.copyfileobj(f, self.wfile)
            except (ConnectionError, TimeoutError):
                self.close_connection = True  # the client hung up: nothing to report

    def _headers(self, ext: str, size: int):
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(ext, "application/octet-stream"))
        self.send_header("Content-Length", str(size))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_bytes(self, body: bytes, ext: str, head: bool):
        self._headers(ext, len(body))
        if not head:
            self.wfile.write(body)


def request_path(raw: str) -> str | None:
    """A request's path relative to the site ("index.html" for "/"), or None when it is unusable.

    Percent-escapes are decoded strictly: bytes that are not UTF-8 and control
    characters (an escaped NUL would reach the file system calls) make the
    path unusable, which the server answers with 400.
    """
    try:
        path = urllib.parse.unquote(urllib.parse.urlsplit(raw).path, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return None
    return posixpath.normpath(path).lstrip("/") or "index.html"


class PageServer(http.server.ThreadingHTTPServer):
    """The page's HTTP server; `url` is where a browser opens it."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (a closed tab, an aborted download) is not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, model_path: str, *, host: str = "127.0.0.1", port: int = 8000,
                 landmarker_model: str | None = None, full_range_model: str | None = None,
                 web_dir: str = WEB_DIR, verbose: bool = False):
        """Checks the build and the models, then binds (it serves after `serve_forever`).

        Args:
          model_path: blind deocc ONNX model.
          host: listen address (loopback unless the user asked otherwise).
          port: TCP port, 0 for any free one.
          landmarker_model: explicit face_landmarker.task, else `assets.resolve_model`.
          full_range_model: explicit face_detection_full_range.tflite, else
            `assets.resolve_model`.
          web_dir: the web/ folder holding dist/.
          verbose: log every request to stderr.

        Raises:
          errors.UserError: missing/stale build, bad model, busy port (one line each).
        """
        self.dist = os.path.realpath(check_build(web_dir))
        self.model_path = os.path.abspath(model_path)
        info = model_info(self.model_path)
        try:
            self.landmarker_path = os.path.abspath(
                assets.resolve_model("face_landmarker.task", landmarker_model))
            detector_path = assets.resolve_model(blazeface.MODEL_NAME, full_range_model)
        except assets.AssetError as e:
            raise errors.InputNotFoundError(str(e)) from e
        # Converted once per model (about a minute), then read from the cache.
        self.face_models = web_models.face_models(self.landmarker_path, detector_path)
        self.verbose = verbose
        self.page_config = {
            "model": {"url": MODEL_URL, **info},
            "landmarker": LANDMARKER_URL,
            "faces": {
                "detector": {"url": web_models.DETECTOR_URL, **self.face_models.names["detector"]},
                "landmarks": {"url": web_models.LANDMARKS_URL,
                              **self.face_models.names["landmarks"]},
                "settings": web_models.finder_settings(self.landmarker_path),
            },
            "mediapipe_wasm": "vendor/mediapipe",
            "ort_wasm": "vendor/ort/",
        }
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise errors.InvalidInputError(
                    f"port {port} on {host} is already in use; pass another --port "
                    "(or --port=0 for any free one)") from e
            # Permission (port < 1024), an unknown or foreign address...: all fixable by flags.
            raise errors.InvalidInputError(
                f"cannot listen on {host} port {port}: {e.strerror or e}") from e

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
