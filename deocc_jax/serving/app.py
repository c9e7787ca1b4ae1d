"""The HTTP service: a Starlette app over `PhotoService`.

    POST /v1/deocclude   body: a photo (Content-Type image/*: JPEG, PNG, WebP...)
                         200: the de-occluded photo as PNG, header X-Deocc-Faces: N; without a
                         face the photo comes back unchanged (its own bytes and type), N = 0.
                         ?mask=true: a multipart/mixed body (RFC 2046) of two parts, "image"
                         (as above) and "mask" (PNG, grey: occlusion probability x 255).
    GET  /healthz        200 while the process serves (500 if the model failed to warm up)
    GET  /readyz         200 once the model is loaded and compiled for every batch size, else 503
    GET  /metrics        Prometheus text (`serving.metrics`)

Every error is JSON {"error": "<one line>"}: 400 not an image / truncated / bad query, 404, 405
wrong method, 413 body over --max_body_mb or photo over --max_pixels, 415 not image/*, 503 queue
full (Retry-After), 504 past the deadline (--timeout_s, or a shorter X-Deocc-Timeout-S from the
client), 500 anything unexpected (logged; the process and the other requests go on).

The event loop only reads bodies and writes responses: decoding, face finding, blending and PNG
encoding run in a pool of `workers` threads, the model in the batcher's own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import secrets
import threading
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deocc_jax import errors
from deocc_jax.io import images
from deocc_jax.artifacts.predictors import Predictor
from deocc_jax.serving.config import ServeConfig
from deocc_jax.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from deocc_jax.serving.metrics import Metrics
from deocc_jax.serving.photos import Cancelled, PhotoResult, PhotoService

DEOCCLUDE = "/v1/deocclude"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
ROUTES = (DEOCCLUDE, HEALTHZ, READYZ, METRICS)
FACES_HEADER = "X-Deocc-Faces"
TIMEOUT_HEADER = "X-Deocc-Timeout-S"
RETRY_AFTER_S = 1

log = logging.getLogger("deocc.serve")


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def multipart_mixed(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/mixed message of (name, content type, bytes) parts."""
    boundary = "deocc-" + secrets.token_hex(16)
    chunks = []
    for name, ctype, data in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Disposition: inline; "
                      f'name="{name}"\r\nContent-Length: {len(data)}\r\n\r\n'.encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/mixed; boundary={boundary}"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, f"request body of {int(declared)} bytes is over the limit of "
                              f"{limit} bytes (--max_body_mb)")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise _HttpError(413, f"request body is over the limit of {limit} bytes (--max_body_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("false", "0", "no"):
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    raise _HttpError(400, f"query parameter {name}={value!r}: expected true or false")


def _deadline(config: ServeConfig, request: Request) -> float:
    """The server's --timeout_s, or the client's shorter X-Deocc-Timeout-S."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return config.timeout_s
    try:
        asked = float(value)
    except ValueError:
        asked = -1.0
    if not asked > 0:
        raise _HttpError(400, f"header {TIMEOUT_HEADER}: {value!r} is not a positive number of "
                              "seconds")
    return min(asked, config.timeout_s)


class _State:
    """What the handlers share: the service, its pool, admission count, readiness."""

    def __init__(self, model: Predictor, config: ServeConfig, metrics: Metrics):
        self.model, self.config, self.metrics = model, config, metrics
        self.service: PhotoService | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.ready = threading.Event()
        self.failed: str | None = None
        self.in_flight = 0
        self.ids = itertools.count()

    def start(self, warm: bool) -> None:
        self.service = PhotoService(self.model, self.config, on_batch=self.metrics.observe_batch,
                                    on_queue=self.metrics.batch_queue.set)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.config.workers,
                                                          thread_name_prefix="deocc-photo")
        if warm:
            threading.Thread(target=self._warm_up, name="deocc-warm-up", daemon=True).start()
        else:
            self._set_ready()

    def _warm_up(self) -> None:
        start = time.perf_counter()
        try:
            self.service.warm_up()
        except Exception as e:  # noqa: BLE001 - reported by /healthz and the log, not a crash
            self.failed = errors.one_line(e)
            log.exception("warm-up failed: %s", self.failed)
            return
        log.info("model warmed up in %.1f s; ready", time.perf_counter() - start)
        self._set_ready()

    def _set_ready(self) -> None:
        self.ready.set()
        self.metrics.ready.set(1)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.service is not None:
            self.service.close()


def _photo_response(result: PhotoResult, want_mask: bool) -> Response:
    headers = {FACES_HEADER: str(result.faces)}
    if not want_mask:
        return Response(result.image, media_type=result.content_type, headers=headers)
    body, ctype = multipart_mixed([("image", result.content_type, result.image),
                                   ("mask", "image/png", result.mask_png)])
    return Response(body, headers={**headers, "Content-Type": ctype})


def _make_deocclude(state: _State):
    async def deocclude(request: Request) -> Response:
        config = state.config
        try:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise _HttpError(415, f"Content-Type {ctype or '(none)'!r}: send the photo as the "
                                      "body with Content-Type image/jpeg, image/png or image/webp")
            want_mask = _flag(request.query_params.get("mask"), "mask")
            deadline = _deadline(config, request)
            if state.in_flight >= config.max_queue:
                raise _HttpError(503, f"the server is at its limit of {config.max_queue} requests "
                                      "(--max_queue); retry later",
                                 {"Retry-After": str(RETRY_AFTER_S)})
        except _HttpError as e:
            return error_response(e.status, str(e), e.headers)
        state.in_flight += 1
        state.metrics.queue_depth.set(state.in_flight)
        cancelled = threading.Event()
        try:
            async with asyncio.timeout(deadline):
                body = await read_body(request, config.max_body_bytes)
                job = functools.partial(state.service.restore, body, ctype, want_mask=want_mask,
                                        owner=next(state.ids), cancelled=cancelled)
                result = await asyncio.get_running_loop().run_in_executor(state.pool, job)
            state.metrics.faces.observe(result.faces)
            return _photo_response(result, want_mask)
        except _HttpError as e:
            return error_response(e.status, str(e), e.headers)
        except (TimeoutError, Cancelled):
            cancelled.set()
            return error_response(504, f"not done within the deadline of {deadline:g} s")
        except images.DecodeError as e:
            status = 413 if e.reason == images.TOO_LARGE else 400
            hint = " (--max_pixels)" if status == 413 else ""
            return error_response(status, errors.one_line(e) + hint)
        except ClientDisconnect:
            cancelled.set()
            return error_response(400, "the client disconnected before sending the whole body")
        except Exception as e:  # noqa: BLE001 - one request's failure must not take the server down
            log.exception("request failed")
            return error_response(500, f"internal error: {errors.one_line(e)}")
        finally:
            state.in_flight -= 1
            state.metrics.queue_depth.set(state.in_flight)
    return deocclude


def _make_probes(state: _State):
    async def healthz(request: Request) -> Response:
        if state.failed:
            return error_response(500, f"model warm-up failed: {state.failed}")
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready.is_set():
            return JSONResponse({"status": "ready"})
        return error_response(503, state.failed or "the model is loading and compiling")

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
    return healthz, readyz, metrics


class _RequestMetrics:
    """ASGI middleware: every response counted by route, method and status, and timed."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500
        start = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error: {errors.one_line(exc)}")


def create_app(model: Predictor, config: ServeConfig, *, warm: bool = True) -> Starlette:
    """The ASGI app; its lifespan starts the service (and warms the model) and stops it.

    Args:
      model: a blind Predictor.
      config: the service's limits and batching.
      warm: compile the model for every batch size before /readyz says ready
        (in the background; requests are served meanwhile, the first ones slowly).
    """
    metrics = Metrics()
    state = _State(model, config, metrics)
    healthz, readyz, metrics_route = _make_probes(state)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start(warm)
        try:
            yield
        finally:
            state.stop()

    app = Starlette(
        routes=[Route(DEOCCLUDE, _make_deocclude(state), methods=["POST"]),
                Route(HEALTHZ, healthz, methods=["GET"]),
                Route(READYZ, readyz, methods=["GET"]),
                Route(METRICS, metrics_route, methods=["GET"])],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    app.state.deocc = state
    return app
