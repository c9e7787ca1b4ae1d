"""Runs the app on uvicorn: bind, serve, and on SIGTERM a graceful stop with exit status 0.

uvicorn's shutdown on SIGTERM/SIGINT is the one wanted: it stops accepting
connections, lets in-flight requests finish (up to `timeout_graceful_shutdown`),
then runs the app's lifespan shutdown (the model thread drains). Afterwards it
re-raises the signal it caught under the handler that was there before it
started; `_graceful_signals` makes that handler a no-op, so a graceful stop
ends with exit status 0 rather than death by the signal.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from typing import Callable

import uvicorn

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.io import assets
from deocc_jax.restoration import frames
from deocc_jax.serving.app import create_app
from deocc_jax.serving.config import ServeConfig

# Seconds beyond the request deadline that a graceful stop waits for in-flight requests.
_SHUTDOWN_GRACE_S = 5.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one).

    Raises:
      errors.InvalidInputError: the address cannot be bound (in use, no such host...).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise errors.InvalidInputError(f"--host {host}: {e.strerror or e}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise errors.InvalidInputError(f"--host {host} --port {port}: cannot listen there: "
                                       f"{e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _graceful_signals():
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(model_path: str | None, config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8080,
          checkpoint: str | int = "latest", access_log: bool = True, warm: bool = True,
          log: Callable[[str], None] = print) -> None:
    """Serves the model until SIGTERM/SIGINT; returns after a graceful stop.

    Everything a user can get wrong (flags, the model, the MediaPipe model, the
    address) fails here, before the server starts, as a one-line error.

    Args:
      model_path: any model `predictors.open_predictor` opens; None: the shipped one.
      config: limits and batching (validated here).
      host, port: where to listen (port 0: a free port, printed).
      checkpoint: for training workdirs.
      access_log: uvicorn's per-request log lines.
      warm: compile the model for every batch size before /readyz says ready.
      log: where the "serving on" line goes.
    """
    config.validate()
    model = predictors.open_predictor(model_path, checkpoint)
    frames.check_model(model, None)
    assets.resolve_model("face_landmarker.task", config.landmarker_model)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    app = create_app(model, config, warm=warm)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="info", access_log=access_log, lifespan="on",
        timeout_graceful_shutdown=int(config.timeout_s + _SHUTDOWN_GRACE_S)))
    logging.getLogger("deocc.serve").setLevel(logging.INFO)
    log(f"deocc serve: {model.description} on http://{bound_host}:{bound_port} "
        f"(max_batch {config.max_batch}, max_wait {config.max_wait_ms:g} ms, "
        f"{config.workers} workers)")
    with _graceful_signals():
        server.run(sockets=[sock])
    log("deocc serve: stopped")
