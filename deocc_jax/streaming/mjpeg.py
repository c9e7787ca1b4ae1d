"""An MJPEG stream over HTTP: what OBS (Media or Browser source), browsers and ffplay read.

    http://127.0.0.1:PORT/            a page showing the stream
    http://127.0.0.1:PORT/stream.mjpg multipart/x-mixed-replace JPEG stream
    http://127.0.0.1:PORT/snapshot.jpg the newest frame
    http://127.0.0.1:PORT/stats       the run's counters (JSON)

e.g. `ffplay -fflags nobuffer http://127.0.0.1:8080/stream.mjpg`.

Each client gets the newest frame whenever it is ready for one: a slow client
skips frames, it never makes the pipeline wait or a queue grow. A frame is
JPEG-encoded once, by the first client thread that needs it, never on the
pipeline's threads. The server listens on 127.0.0.1 unless told otherwise.

A stream never goes quiet for long: when no new frame comes for
`REPEAT_AFTER_S` (the model still loading, a camera that stalls) the newest
one is sent again, so clients with a read timeout keep the connection. Such
parts, and a placeholder published before the first real frame, carry an
`X-Deocc-Frame: repeat` or `starting` header; `read_stream` skips them.
"""

from __future__ import annotations

import errno
import http.client
import http.server
import json
import socketserver
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable

import cv2
import numpy as np

from deocc_jax import errors

BOUNDARY = "deoccframe"
JPEG_QUALITY = 85
REPEAT_AFTER_S = 1.0
FRAME_HEADER = "X-Deocc-Frame"
_PAGE = (b"<!doctype html><title>deocc live</title>"
         b"<body style='margin:0;background:#111'>"
         b"<img src='/stream.mjpg' style='max-width:100%;display:block;margin:auto'></body>")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.0"  # one response per connection; the stream ends with it

    def log_message(self, *args) -> None:  # no per-request lines on the console
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        owner: MJPEGServer = self.server.owner
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", _PAGE)
        elif path in ("/stream.mjpg", "/stream", "/video"):
            self._stream(owner)
        elif path in ("/snapshot.jpg", "/snapshot"):
            seq, jpeg = owner.jpeg_after(0, timeout_s=5.0)
            if jpeg is None:
                self._send(503, "text/plain", b"no frame yet\n")
            else:
                self._send(200, "image/jpeg", jpeg)
        elif path == "/stats":
            self._send(200, "application/json", json.dumps(owner.stats()).encode())
        else:
            self._send(404, "text/plain", b"not found: try /stream.mjpg\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, owner: "MJPEGServer") -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        owner._client(+1)
        seq = 0
        sent = time.monotonic()
        try:
            while not owner.closed:
                new, jpeg = owner.jpeg_after(seq, timeout_s=0.25)
                if jpeg is None:
                    if not seq or time.monotonic() - sent < owner.repeat_after_s:
                        continue
                    new, jpeg = owner.jpeg_after(seq - 1, timeout_s=0)  # the newest again
                    if jpeg is None:
                        continue
                kind = "starting" if new == owner.placeholder_seq else "repeat" if new == seq else None
                seq = new
                extra = f"{FRAME_HEADER}: {kind}\r\n" if kind else ""
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n{extra}"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()
                sent = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away
        finally:
            owner._client(-1)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "MJPEGServer"

    def handle_error(self, request, client_address):
        # A client that hangs up (mid-snapshot, mid-page) is not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def read_stream(url: str, max_frames: int | None = None, max_seconds: float = 10.0,
                timeout_s: float = 10.0) -> dict[str, Any]:
    """Reads an MJPEG stream as a plain HTTP client would (tests, benchmarks).

    Args:
      url: the stream URL (http://host:port/stream.mjpg).
      max_frames: stop after this many frames.
      max_seconds: stop after this long.
      timeout_s: socket timeout.

    Returns:
      {"content_type", "jpegs": [bytes...], "frames", "seconds", "fps",
      "placeholders"}: fps counts frames after the first (the rate the client
      actually received); "starting" and "repeat" parts are not frames, only
      counted in "placeholders".
    """
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout_s)
    try:
        conn.request("GET", parsed.path or "/")
        resp = conn.getresponse()
        ctype = resp.getheader("Content-Type", "")
        if resp.status != 200 or "boundary=" not in ctype:
            raise IOError(f"{url}: HTTP {resp.status}, Content-Type {ctype!r}: not an MJPEG stream")
        marker = b"--" + ctype.split("boundary=", 1)[1].strip().encode()
        jpegs, times = [], []
        placeholders = 0
        start = time.monotonic()
        while time.monotonic() - start < max_seconds and (max_frames is None or len(jpegs) < max_frames):
            line = resp.fp.readline()
            if not line:
                break  # the server ended the stream
            if line.strip() != marker:
                continue
            headers = {}
            while (h := resp.fp.readline().strip()):
                k, v = h.decode("latin-1").split(":", 1)
                headers[k.strip().lower()] = v.strip()
            jpeg = resp.fp.read(int(headers["content-length"]))
            if FRAME_HEADER.lower() in headers:
                placeholders += 1
                continue
            jpegs.append(jpeg)
            times.append(time.monotonic())
    finally:
        conn.close()
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {"content_type": ctype, "jpegs": jpegs, "frames": len(jpegs), "seconds": span,
            "fps": (len(jpegs) - 1) / span if span > 0 else 0.0, "placeholders": placeholders}


class MJPEGServer:
    """Serves the newest published frame as MJPEG; a context manager.

    Args:
      port: TCP port; 0 picks a free one (see `.port`).
      bind: address to listen on; "127.0.0.1" keeps the stream on this machine.
      stats: a callable returning the run's counters for /stats.
      quality: JPEG quality (1-100).
      repeat_after_s: send the newest frame again after this long without a new one.

    Raises:
      errors.InvalidInputError: the port is taken or the address is not local.
    """

    def __init__(self, port: int, bind: str = "127.0.0.1",
                 stats: Callable[[], dict[str, Any]] | None = None, quality: int = JPEG_QUALITY,
                 repeat_after_s: float = REPEAT_AFTER_S):
        try:
            self._server = _Server((bind, port), _Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise errors.InvalidInputError(
                    f"--serve={port}: port {port} is already in use on {bind}; pick another") from e
            raise errors.InvalidInputError(f"--serve={port} --bind={bind}: cannot listen ({e.strerror})") from e
        self._server.owner = self
        self.bind = bind
        self.port = self._server.server_address[1]
        self.quality = quality
        self.repeat_after_s = repeat_after_s
        self.placeholder_seq = -1  # the sequence number of a `placeholder=True` frame
        self._stats = stats or (lambda: {})
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._jpeg: tuple[int, bytes] | None = None
        self._clients = 0
        self.frames_published = 0
        self.frames_encoded = 0
        self.closed = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mjpeg-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The stream's URL."""
        host = "127.0.0.1" if self.bind in ("", "0.0.0.0") else self.bind
        return f"http://{host}:{self.port}/stream.mjpg"

    @property
    def clients(self) -> int:
        """Clients currently reading the stream."""
        with self._cond:
            return self._clients

    def _client(self, delta: int) -> None:
        with self._cond:
            self._clients += delta

    def stats(self) -> dict[str, Any]:
        return self._stats()

    def publish(self, rgb: np.ndarray, placeholder: bool = False) -> None:
        """Makes `rgb` (uint8 [H, W, 3]) the newest frame; cheap (no encoding here).

        Args:
          rgb: the frame.
          placeholder: not a video frame (a "starting" picture shown until the
            first one); sent marked as such.
        """
        with self._cond:
            self._frame = rgb
            self._seq += 1
            if placeholder:
                self.placeholder_seq = self._seq
            else:
                self.frames_published += 1
            self._cond.notify_all()

    def jpeg_after(self, seq: int, timeout_s: float) -> tuple[int, bytes | None]:
        """The newest frame newer than `seq`, as JPEG (encoded once, shared by all clients).

        Returns:
          (its sequence number, JPEG bytes), or (seq, None) after `timeout_s`.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > seq or self.closed, timeout=timeout_s) \
                    or self._seq <= seq:
                return seq, None
            if self._jpeg is not None and self._jpeg[0] == self._seq:
                return self._jpeg
            cur, frame = self._seq, self._frame
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        with self._cond:
            if self._jpeg is None or self._jpeg[0] < cur:
                self._jpeg = (cur, buf.tobytes())
                self.frames_encoded += 1
            return self._jpeg

    def close(self) -> None:
        """Ends every stream and stops listening."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        # Give streaming handlers a moment to notice and finish their response.
        deadline = time.monotonic() + 1.0
        while self.clients and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> "MJPEGServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
