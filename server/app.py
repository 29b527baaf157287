"""The FastAPI application: OpenAI Chat Completions over `vlm_edge.edge`.

    app = create_app(ServerConfig("engine/"))      # uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health (503 while the engine loads,
200 when ready), GET /metrics (Prometheus). Every error is an OpenAI-style body
{"error": {"message", "type", "param", "code"}} with a 4xx status that says whose problem it is:

    400  malformed JSON, missing / wrong-typed / unknown fields, unsupported parameter values,
         an image that cannot be decoded or fetched, too many images, a prompt over the context
    401  a missing or wrong API key (when the server has one)
    404  a model name the server does not serve
    413  a request body or an image over the limits (bytes or declared pixels)
    429  the admission queue is full (with Retry-After)
    503  the engine is loading or failed to load, or the server is stopping
    504  the request's timeout passed before its answer was complete (non-streaming)

A streaming request that fails after its first byte ends with an error event and [DONE].
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from pydantic import ValidationError
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlm_edge.common.errors import InputError, VlmEdgeError
from vlm_edge.common.fsutil import json_depth
from vlm_edge.common.image import fit_image, refits, whole_pictures
from vlm_edge.common.log import get_logger
from vlm_edge.common.video import VideoStopped, video_prompt

from .images import (DecodeBudget, ImageLimits, ImageRejected, fetch_image, fetch_video, release_freed_memory,
                     use_mmap_for_large_blocks)
from .metrics import Metrics
from .schema import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList
from .worker import Busy, Job, NotReady, Worker

log = get_logger(__name__)


@dataclass
class ServerConfig:
    engine: str
    backend: str = "auto"
    threads: int | None = None
    model_name: str | None = None  # default: the engine directory's name
    api_key: str | None = None
    queue_size: int = 16  # requests admitted at once (running + waiting); more get 429
    timeout: float = 300.0  # seconds per request, queueing included
    default_max_tokens: int = 256
    max_images: int = 8
    limits: ImageLimits = field(default_factory=ImageLimits)
    cors_origins: tuple[str, ...] = ()
    shutdown_grace: float = 10.0  # seconds the running request gets to finish when the server stops
    verify: bool = False  # check the engine files' SHA-256 when loading (sizes are always checked)
    max_memory: int | None = None  # bytes of images being decoded, all requests together; None: default_max_memory()

    @property
    def name(self) -> str:
        return self.model_name or Path(self.engine).resolve().name

    @property
    def max_body_bytes(self) -> int:  # base64 images + the text around them
        return self.max_images * (self.limits.max_bytes * 4 // 3 + 1024) + (1 << 20)


def default_max_memory() -> int:
    """Image decoding memory when none is given: an eighth of the machine's RAM, at most 1 GiB
    (a 4096 x 4096 image costs about 80 MiB while it is decoded)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 30
    return max(128 << 20, min(1 << 30, ram // 8))


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in ((400, "invalid request"), (401, "bad API key"), (404, "unknown model"),
                         (413, "too large"), (429, "queue full"), (503, "not ready"), (504, "timed out"))
}


def create_app(config: ServerConfig, *, load: Callable[[], Any] | None = None) -> FastAPI:
    """The application; `load` builds the pipeline (default: vlm_edge.edge.load of the engine)."""

    def default_load():
        from vlm_edge.edge import load as edge_load

        return edge_load(config.engine, config.backend, threads=config.threads, verify=config.verify)

    worker = Worker(load or default_load, config.queue_size)
    budget = DecodeBudget(config.max_memory or default_max_memory(), wait=min(30.0, config.timeout))
    use_mmap_for_large_blocks()  # a freed decode goes back to the system, not to the heap
    metrics = Metrics(lambda: worker.admitted, budget)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await run_in_threadpool(worker.stop, config.shutdown_grace)

    app = FastAPI(title="vlm-edge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible chat completions over a vlm-edge engine directory")
    app.state.worker, app.state.config, app.state.metrics = worker, config, metrics
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    # ---- errors -----------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        elif first.get("type") == "extra_forbidden":
            message = f"unsupported parameter {param!r}; vlm-serve does not implement it"
        elif first.get("type") == "missing":
            message = f"missing required field {param!r}"
        else:
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return APIError(400, message, param=param, code=first.get("type")).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        return APIError(e.status_code, str(e.detail), type_="invalid_request_error").response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception):  # a bug of ours: say so, keep serving
        log.exception("internal error")
        return APIError(500, f"internal error ({type(e).__name__}); the server keeps running",
                        type_="server_error").response()

    app.add_middleware(Guard, config=config)

    # ---- endpoints --------------------------------------------------------------------------
    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health():
        if worker.error is not None:
            return APIError(503, f"the engine failed to load: {worker.error}", type_="server_error").response()
        if not worker.ready.is_set() or worker.pipe is None:
            return APIError(503, "the engine is loading", type_="server_error", code="loading").response()
        if worker.closing:
            return APIError(503, "the server is stopping", type_="server_error").response()
        return {"status": "ok", "model": config.name, "backend": worker.pipe.backend}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return {"object": "list", "data": [{"id": config.name, "object": "model", "created": created,
                                            "owned_by": "vlm-edge"}]}

    # The body is read here and parsed in the thread pool (a 10 MB JSON body takes the event loop
    # tens of milliseconds to parse, and /health would wait); the schema is documented as usual.
    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERROR_RESPONSES,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}})
    async def chat_completions(request: Request):
        body = await run_in_threadpool(parse_request, await request.body())
        if body.model != config.name:
            raise APIError(404, f"model {body.model!r} is not served here; GET /v1/models lists {config.name!r}",
                           param="model", code="model_not_found")
        if worker.error is not None or not worker.ready.is_set() or worker.closing:
            raise APIError(503, "the engine is loading" if worker.error is None and not worker.closing
                           else "the server cannot take requests now", type_="server_error")
        start = time.perf_counter()
        try:  # admitted before any image or video is decoded: past the queue it is 429 at once
            worker.admit()
        except Busy:
            metrics.request("rejected")
            raise APIError(429, f"the server is busy ({config.queue_size} requests admitted); retry shortly",
                           type_="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except NotReady as e:
            raise APIError(503, str(e), type_="server_error") from None
        try:
            prepared = await prepare_while_connected(request, body, config, worker, budget, start + config.timeout)
        except BaseException:
            worker.release()
            raise
        if prepared is None:  # the client went away while its input was decoded
            worker.release()
            metrics.request("disconnect")
            return JSONResponse({}, status_code=499)  # nobody reads it
        messages, images, sampling, video = prepared
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(messages, images, sampling,
                  on_piece=lambda piece: loop.call_soon_threadsafe(events.put_nowait, ("piece", piece)),
                  on_done=lambda result, error: loop.call_soon_threadsafe(events.put_nowait, ("done", (result, error))),
                  deadline=start + config.timeout, video=video)
        worker.enqueue(job)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(job, events, completion_id, config.name, include_usage, metrics,
                                                   start), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, first = [], None
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.reason = "disconnect"
                        job.cancel.set()
                        metrics.request("disconnect")
                        return JSONResponse({}, status_code=499)  # nobody reads it
                    continue
                if kind == "piece":
                    first = first or time.perf_counter()
                    text.append(value)
                    continue
                result, error = value
                break
        except asyncio.CancelledError:  # the client went away
            job.reason = "disconnect"
            job.cancel.set()
            raise
        if error is not None:
            raise status_for(error, metrics)
        if result is None or result.finish_reason == "cancelled":
            metrics.request(job.reason or "cancelled")
            if job.reason == "timeout":
                raise APIError(504, f"the answer took longer than the server's timeout of {config.timeout:g} s",
                               type_="timeout_error", code="timeout")
            raise APIError(503, "the request was cancelled (the server is stopping)", type_="server_error")
        metrics.finished(result, start, first)
        return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": config.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": usage(result)}

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()  # FastAPI keeps it in app.openapi_schema
            request_schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["ChatCompletionRequest"] = request_schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


MAX_BODY_DEPTH = 16  # a chat request nests 6 deep (messages, content parts, image_url)


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """The request body as FastAPI would parse it, with the same validation errors."""
    try:
        data = json.loads(raw)
        if json_depth(data) > MAX_BODY_DEPTH:
            raise RecursionError
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        error = (e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8" if isinstance(e, UnicodeDecodeError)
                 else f"nested deeper than {MAX_BODY_DEPTH} levels")
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(e, "pos", 0)),
                                       "msg": "JSON decode error", "ctx": {"error": error}}]) from None
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


class Guard:
    """ASGI middleware for /v1/: the API key, and the body size from Content-Length before it is read.
    (Plain ASGI, not BaseHTTPMiddleware, which holds streamed responses open at shutdown.)"""

    def __init__(self, app, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            if self.config.api_key is not None:
                given = headers.get(b"authorization", b"")
                if not secrets.compare_digest(given, f"Bearer {self.config.api_key}".encode()):
                    error = APIError(401, "a valid API key is needed: Authorization: Bearer <key>",
                                     type_="authentication_error", code="invalid_api_key")
                    return await error.response()(scope, receive, send)
            limit = self.config.max_body_bytes
            too_large = APIError(413, f"the request body is over the server's limit of {limit} bytes",
                                 code="request_too_large")
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                return await too_large.response()(scope, receive, send)
            if b"transfer-encoding" in headers or not length.isdigit():  # chunked: count what arrives
                body = await _read_body(receive, limit)
                if body is None:
                    return await too_large.response()(scope, receive, send)
                receive = _replay(body, receive)
        await self.app(scope, receive, send)


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as more than `limit` bytes have arrived."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        size += len(message.get("body", b""))
        if size > limit:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI receive that hands the app `body` in one message, then the real channel (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def prepare_while_connected(request: Request, body: ChatCompletionRequest, config: ServerConfig,
                                  worker: Worker, budget: DecodeBudget, deadline: float):
    """`prepare` in the thread pool, watching the client meanwhile: None when it went away (the
    decoding stops at its next frame); APIError 504 when `deadline` passed first."""
    gone = threading.Event()

    def should_stop() -> bool:
        return gone.is_set() or time.perf_counter() > deadline

    task = asyncio.ensure_future(run_in_threadpool(prepare, body, config, worker, budget, should_stop))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.1)
            if not task.done() and await request.is_disconnected():
                gone.set()
        return task.result()
    except VideoStopped:
        if gone.is_set():
            return None
        raise APIError(504, f"decoding the video took longer than the server's timeout of {config.timeout:g} s",
                       type_="timeout_error", code="timeout") from None
    except asyncio.CancelledError:
        gone.set()
        raise


def prepare(body: ChatCompletionRequest, config: ServerConfig, worker: Worker,
            budget: DecodeBudget | None = None, should_stop: Callable[[], bool] | None = None
            ) -> tuple[list, list, Any, list | None]:
    """Messages with <image> placeholders, decoded images and the sampling config; APIError when a
    part of the request cannot be served. Runs in a thread pool (image decoding is CPU work).
    Each image, and each frame of a video, is fitted to the vision tower's input size as soon as it
    is decoded, so a request holds its full-size pixels one picture at a time, within `budget`.
    `should_stop` is asked between a video's frames (VideoStopped)."""
    try:
        return _prepare(body, config, worker, budget, should_stop)
    finally:
        release_freed_memory()


def _prepare(body: ChatCompletionRequest, config: ServerConfig, worker: Worker,
             budget: DecodeBudget | None, should_stop: Callable[[], bool] | None = None
             ) -> tuple[list, list, Any, list | None]:
    from vlm_edge.edge import SamplingConfig

    check_text(body, worker.pipe)
    pre = worker.pipe.preprocess
    fit = None if refits(pre) else (lambda image: fit_image(image, pre))
    frame_pre = whole_pictures(pre)  # video frames are seen whole, never tiled
    fit_frame = None if refits(frame_pre) else (lambda image: fit_image(image, frame_pre))
    messages, images = [], []
    video, video_message = None, None  # a video_url part's frames, and the message that holds it
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            if "<image>" in message.content or "<video>" in message.content:
                raise APIError(400, f"messages[{i}]: '<image>' and '<video>' are reserved; send images and videos as "
                               "image_url and video_url parts", param=f"messages.{i}.content")
            messages.append({"role": message.role, "content": message.content})
            continue
        pieces = []
        for j, part in enumerate(message.content):
            label = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if "<image>" in part.text or "<video>" in part.text:
                    raise APIError(400, f"{label}: '<image>' and '<video>' are reserved; send images and videos as "
                                   "image_url and video_url parts", param=f"messages.{i}.content.{j}")
                pieces.append(part.text)
                continue
            if part.type == "video_url":
                if message.role != "user":
                    raise APIError(400, f"{label}: videos are only taken in user messages", param=f"messages.{i}")
                if video is not None or images:
                    raise APIError(400, f"{label}: one video per request, and not with images", param="messages",
                                   code="too_many_videos")
                try:
                    video = fetch_video(part.video_url.url, config.limits, label, worker.pipe.num_video_frames,
                                        budget=budget, fit=fit_frame, should_stop=should_stop)
                except ImageRejected as e:
                    raise APIError(e.status, str(e), param=f"messages.{i}.content.{j}.video_url", code=e.code) from None
                video_message = len(messages)
                pieces.append("<video>\n")
                continue
            if video is not None:
                raise APIError(400, f"{label}: one video per request, and not with images", param="messages",
                               code="too_many_videos")
            if message.role != "user":
                raise APIError(400, f"{label}: images are only taken in user messages", param=f"messages.{i}")
            if len(images) == config.max_images:
                raise APIError(400, f"more than {config.max_images} images in one request; send fewer",
                               param="messages", code="too_many_images")
            try:
                images.append(fetch_image(part.image_url.url, config.limits, label, budget=budget, fit=fit))
            except ImageRejected as e:
                raise APIError(e.status, str(e), param=f"messages.{i}.content.{j}.image_url", code=e.code) from None
            pieces.append("<image>\n")
        messages.append({"role": message.role, "content": "".join(pieces)})
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop takes at most 4 non-empty strings", param="stop")
    sampling = SamplingConfig(
        max_new_tokens=body.max_completion_tokens or body.max_tokens or config.default_max_tokens,
        temperature=body.temperature if body.temperature is not None else 0.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        seed=None if body.seed is None else body.seed % (1 << 63), stop=tuple(stop))  # numpy takes seeds >= 0
    pipe = worker.pipe
    try:
        sampling.validate()
        from vlm_edge.edge.pipeline import Generation

        if video is not None:
            shown = [dict(m) for m in messages]
            tokens = pipe.video_tokens(video)  # one picture per frame, or per pooled frame
            shown[video_message]["content"] = video_prompt(shown[video_message]["content"], len(tokens))
            ids = pipe.prompt_ids(shown, tokens)
        else:
            ids = pipe.prompt_ids(messages, images)
            tokens = pipe.image_tokens(images)
        pipe._check_context(ids, tokens, sampling, Generation([], "", "length", 0))
    except InputError as e:
        code = "context_length_exceeded" if "context" in str(e) else None
        raise APIError(400, str(e), param="messages", code=code) from None
    return messages, images, sampling, video


def _utf8_bytes(text: str, param: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # a lone surrogate ("\\ud800"): JSON allows it, UTF-8 does not
        raise APIError(400, f"{param} is not valid Unicode text (a lone surrogate at character {e.start}); "
                       "send UTF-8 text", param=param, code="invalid_text") from None


def check_text(body: ChatCompletionRequest, pipe) -> None:
    """Every text of the request is valid Unicode, and all of it together could fit the context:
    a text of B bytes holds at least B / (4 x the longest token) tokens, so a prompt far over the
    context is refused at once, before any tokenizing."""
    total = 0
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            total += _utf8_bytes(message.content, f"messages.{i}.content")
        else:
            for j, part in enumerate(message.content):
                if part.type == "text":
                    total += _utf8_bytes(part.text, f"messages.{i}.content.{j}.text")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    for k, stop in enumerate(stops):
        _utf8_bytes(stop, f"stop.{k}" if not isinstance(body.stop, str) else "stop")
    budget = pipe.context * 4 * pipe.tokenizer.max_token_bytes
    if total > budget:
        raise APIError(400, f"the messages hold {total} bytes of text, more than {pipe.context} tokens of context can "
                       f"hold (at most {budget} bytes with this tokenizer); send a shorter prompt", param="messages",
                       code="context_length_exceeded")


def status_for(error: BaseException, metrics: Metrics) -> APIError:
    if isinstance(error, NotReady):
        metrics.request("cancelled")
        return APIError(503, str(error), type_="server_error")
    if isinstance(error, VlmEdgeError):
        metrics.request("invalid")
        return APIError(400, str(error))
    metrics.request("error")
    log.error("generation failed: %r", error)
    return APIError(500, f"generation failed ({type(error).__name__}); the server keeps running", type_="server_error")


def usage(result) -> dict[str, int]:
    n = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n}


async def stream_events(job: Job, events: asyncio.Queue, completion_id: str, model: str, include_usage: bool,
                        metrics: Metrics, start: float):
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        if include_usage and "usage" not in extra:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    first, done = None, False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await events.get()
            if kind == "piece":
                first = first or time.perf_counter()
                yield chunk({"content": value})
                continue
            done = True
            result, error = value
            if error is not None or result is None or result.finish_reason == "cancelled":
                if error is not None:
                    e = status_for(error, metrics)
                else:
                    metrics.request(job.reason or "cancelled")
                    e = APIError(504 if job.reason == "timeout" else 503,
                                 "the answer took longer than the server's timeout" if job.reason == "timeout"
                                 else "the request was cancelled (the server is stopping)",
                                 type_="timeout_error" if job.reason == "timeout" else "server_error")
                yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type, 'code': e.code}})}\n\n"
                yield "data: [DONE]\n\n"
                return
            metrics.finished(result, start, first)
            yield chunk({}, result.finish_reason)
            if include_usage:
                body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage(result)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        if not done:  # the client went away mid-stream: stop generating for it
            job.reason = "disconnect"
            job.cancel.set()
            metrics.request("disconnect")
