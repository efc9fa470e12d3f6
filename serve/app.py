"""The HTTP face of `pld serve`: starlette routes, request bodies read under a size and time
limit while they stream in, and every error as JSON with a message that names the problem.

``create_app(service)`` builds the app; nothing lives at module level, so tests can start as
many as they like. Knows HTTP and JSON; the engines are the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pld.errors import ContextOverflowError, InputError
from pld.runtime import Prediction

from .service import Service
from .worker import Job, QueueFull

__all__ = ["ApiError", "ClassifyRequest", "create_app"]


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"code", "message"}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ClassifyRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The body of POST /v1/classify: ``inputs`` (a list) or ``text`` (one), and the task."""

    task: str | None = None
    inputs: list[str] | None = None
    text: str | None = None


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(obj), status, headers, media_type="application/json")


def _error(exc: ApiError) -> Response:
    return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status, exc.headers)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", _too_large(int(declared), limit))
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "body_too_large", _too_large(len(body), limit, "over"))
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the request body took over {timeout:g} s to arrive; send it "
            "in one go",
        ) from None  # fmt: skip
    return bytes(body)


def _too_large(n: int, limit: int, how: str = "") -> str:
    size = f"{how} {n}" if how else str(n)
    return (
        f"request body is {size.strip()} bytes, over the limit of {limit} (--max-body); send "
        "fewer or shorter inputs per request"
    )


def _decode(body: bytes, max_inputs: int) -> ClassifyRequest:
    try:
        req = msgspec.json.decode(body, type=ClassifyRequest)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_request", f"invalid request: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as u:
            raise ApiError(
                400, "invalid_utf8",
                f"request body is not valid UTF-8 (byte {body[u.start]:#04x} at offset "
                f"{u.start}); send JSON encoded as UTF-8",
            ) from None  # fmt: skip
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if (req.inputs is None) == (req.text is None):
        raise ApiError(
            422, "invalid_request",
            'give either "inputs" (a list of texts) or "text" (one text), not both and not neither',
        )  # fmt: skip
    texts = req.inputs if req.inputs is not None else [req.text or ""]
    if not texts:
        raise ApiError(422, "invalid_request", '"inputs" is empty; send at least one text')
    if len(texts) > max_inputs:
        raise ApiError(
            413, "too_many_inputs",
            f"{len(texts)} inputs in one request, over the limit of {max_inputs} "
            "(--max-inputs); split them over several requests",
        )  # fmt: skip
    return req


def _prediction(p: Prediction) -> dict[str, Any]:
    out: dict[str, Any] = {"label": p.label, "score": p.probs[p.label], "probs": p.probs}
    if p.truncated:
        out["truncated"] = True
    return out


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body was read; the server then only waits)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(service: Service) -> Starlette:
    """The ASGI app over a ``Service``: classify, tasks, health, readiness, metrics, reload."""
    opts, metrics, registry = service.options, service.metrics, service.registry

    async def classify(request: Request) -> Response:
        t0 = time.perf_counter()
        task, version, outcome = "", "", "error"
        try:
            body = await _read_body(request, opts.max_body, opts.read_timeout_s)
            req = _decode(body, opts.max_inputs)
            if not registry.ready:
                raise ApiError(
                    503, "not_ready", f"the server is still loading ({registry.loading}); "
                    "retry when GET /readyz answers 200", {"Retry-After": "1"},
                )  # fmt: skip
            texts = req.inputs if req.inputs is not None else [req.text or ""]
            gen = registry.acquire(req.task, len(texts))
            if gen is None:
                names = ", ".join(g.task for g in registry.tasks())
                if req.task is None:
                    raise ApiError(
                        422, "task_required", f'this server runs several tasks ({names}); name '
                        'one with "task"',
                    )  # fmt: skip
                raise ApiError(404, "unknown_task", f"no task {req.task!r}; tasks here: {names}")
            task, version = gen.task, gen.version
            loop = asyncio.get_running_loop()
            job = Job(gen=gen, texts=texts, loop=loop, future=loop.create_future())
            try:
                service.worker.submit(job)
            except QueueFull as exc:
                if registry.release(gen, len(texts)):  # swapped out meanwhile, now unused
                    loop.run_in_executor(service.loader, gen.classifier.close)
                raise ApiError(
                    503, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)}
                ) from None
            left: asyncio.Future[Any] = asyncio.ensure_future(_until_disconnect(request))
            answer: asyncio.Future[Any] = job.future
            try:
                await asyncio.wait({answer, left}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                left.cancel()
            if not job.future.done():
                service.worker.abandon(job)
                job.future.cancel()  # an answer that still comes is dropped
                outcome = "disconnected"
                return Response(status_code=499)  # nobody reads it
            try:
                preds = job.future.result()
            except ContextOverflowError as exc:
                raise ApiError(422, "context_overflow", str(exc)) from None
            except InputError as exc:
                raise ApiError(422, "invalid_input", str(exc)) from None
            except Exception as exc:
                raise ApiError(500, "engine_error", f"{type(exc).__name__}: {exc}") from None
            outcome = "ok"
            return _json(
                {
                    "task": gen.task,
                    "bundle": gen.ref(),
                    "predictions": [_prediction(p) for p in preds],
                }
            )
        except ApiError as exc:
            outcome = exc.code
            return _error(exc)
        except ClientDisconnect:
            outcome = "disconnected"
            return Response(status_code=499)
        finally:
            metrics.requests.labels(task, version, outcome).inc()
            if outcome == "ok":
                metrics.latency.labels(task, version).observe(time.perf_counter() - t0)

    async def tasks(request: Request) -> Response:
        return _json({"ready": registry.ready, "tasks": [g.info() for g in registry.tasks()]})

    async def healthz(request: Request) -> Response:
        return _json({"ok": True, "uptime_s": round(time.time() - service.started, 1)})

    async def readyz(request: Request) -> Response:
        if registry.ready:
            return _json({"ready": True, "tasks": len(registry.active)})
        why = f"loading failed: {service.load_error}" if service.load_error else registry.loading
        return _json({"ready": False, "message": why or "starting"}, 503)

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    admin_token = opts.admin_token.encode() if opts.admin_token is not None else None

    async def reload(request: Request) -> Response:
        host = request.client.host if request.client else ""
        # a request that came through a proxy is not a local one, whatever address it has
        local = _loopback(host) and not any(h in request.headers for h in _FORWARDED)
        # compared as bytes: the header as sent (starlette decodes it as latin-1), the token
        # as UTF-8; a str compare_digest raises on non-ASCII text
        auth = request.headers.get("authorization", "").encode("latin-1")
        token = auth.removeprefix(b"Bearer ").strip()
        allowed = local or (
            admin_token is not None and bool(token) and hmac.compare_digest(token, admin_token)
        )
        if not allowed:
            raise ApiError(
                403, "forbidden", "reload answers on loopback only (not through a proxy), or "
                "with the token given to --admin-token (Authorization: Bearer TOKEN)",
            )  # fmt: skip
        result = await service.reload("POST /v1/reload")
        return _json({**result.as_dict(), "tasks": [g.info() for g in registry.tasks()]})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += "; endpoints: POST /v1/classify, POST /v1/reload, GET /v1/tasks, "
            message += "/healthz, /readyz, /metrics"
        return _error(ApiError(exc.status_code, code, message, dict(exc.headers or {})))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/tasks", tasks, methods=["GET"]),
            Route("/v1/reload", reload, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, 500: server_error},
        lifespan=lifespan,
    )


_FORWARDED = ("x-forwarded-for", "forwarded", "x-real-ip")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
