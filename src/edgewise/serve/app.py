"""The HTTP API: OpenAI-compatible routes (models, completions, chat, embeddings), the Open
Inference Protocol (KServe v2) for any ONNX model, health and Prometheus metrics.

Routes are thin: parse, ask the pool for the model, run it, answer. Errors are OpenAI-style
objects ({"error": {"message", "type", "code"}}) on /v1 and KServe's {"error": message} on /v2.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgewise.errors import EdgewiseError
from edgewise.measure import energy
from edgewise.rwkv.sampling import Sampling
from edgewise.serve.batching import Request as Generation
from edgewise.serve.batching import Stream
from edgewise.serve.metrics import Metrics
from edgewise.serve.pool import ModelBroken, ModelNotFound, ModelPool, ModelTooLarge, PoolBusy
from edgewise.serve.runners import DATATYPES

PUBLIC = ("/health", "/v2/health/", "/openapi.json")
_INFER = re.compile(r"/v2/models/([^/]+)/infer")
_DATATYPE_OF = {np.dtype(v): k for k, v in DATATYPES.items()}
CHAT_STOP = "\n\nUser:"   # where an RWKV World chat model's answer ends: the next turn begins


def event(data: str | dict) -> str:
    """One server-sent event: `data` as it is (a string) or as JSON."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\r\n\r\n"


class EventStream(StreamingResponse):
    """A text/event-stream of `chunks` (whole events, see `event`), written as they come; a
    ": ping" comment after `ping_s` quiet seconds keeps proxies from closing a stream that waits on a
    long prompt. When the client hangs up, the iteration is cancelled (the generator's `finally` stops
    its generation). Written for the one shape the completions stream: sse-starlette's
    EventSourceResponse took ~0.33 ms of the event loop a token (three anyio tasks and an event object
    per chunk), and 8 streams of a small model on 2 cores share those cores with the decoding."""

    media_type = "text/event-stream"

    def __init__(self, chunks, ping_s: float = 15.0) -> None:
        super().__init__(chunks, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.chunks, self.ping_s = chunks, ping_s   # no content-length: the body is open-ended

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = [time.monotonic()]

        async def pump():
            async for text in self.chunks:
                await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
                last[0] = time.monotonic()
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def ping():
            while True:
                await asyncio.sleep(self.ping_s - (time.monotonic() - last[0]))
                if time.monotonic() - last[0] >= self.ping_s:
                    await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                    last[0] = time.monotonic()

        async def hang_up():
            while (await receive())["type"] != "http.disconnect":
                pass
        tasks = [asyncio.ensure_future(job()) for job in (pump, ping, hang_up)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.chunks.aclose()
        if tasks[0].done() and not tasks[0].cancelled() and tasks[0].exception() is not None:
            raise tasks[0].exception()


@dataclass
class Settings:
    models_dir: str
    budget: int
    api_key: str | None = None          # None: no auth (only allowed on loopback; the CLI checks)
    pins: tuple[str, ...] = ()
    keep_alive: float | None = 300.0     # seconds; None: never unload an idle model
    max_queue: int = 32                  # requests in flight or waiting per model
    max_body: int = 1 << 20              # bytes
    max_tokens: int = 4096               # cap of max_tokens
    threads: int | None = None
    device: str = energy.DEFAULT_PROFILE


# -- request bodies (their schema is the OpenAPI schema) -----------------------------------
class _Generation(BaseModel):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    n: int = Field(1, ge=1, le=1)
    user: Optional[str] = None


class CompletionRequest(_Generation):
    prompt: Union[str, list[str]] = ""


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict[str, Any]], None] = None


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)


class EmbeddingRequest(BaseModel):
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"   # base64: little-endian float32, as OpenAI sends
    user: Optional[str] = None


class _Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: list[_Tensor] = Field(min_length=1)
    outputs: Optional[list[dict[str, Any]]] = None


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


def _error(request_path: str, status: int, message: str, kind: str = "invalid_request_error",
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = ({"error": message} if request_path.startswith("/v2") else
            {"error": {"message": message, "type": kind, "param": None, "code": code}})
    return JSONResponse(body, status_code=status, headers=headers)


def chat_prompt(messages: list[ChatMessage], generated=None) -> str:
    """The RWKV World chat format: "User: ...\n\nAssistant: ...", ending with "Assistant:".

    An assistant turn is written back as this server generated it, so that a conversation sent back
    finds its cached state: right after "Assistant:" when it begins with a space (as a trained model's
    answers do) or when `generated(text, start)` says a cached state read it so (an answer that began
    without one); other turns (written by hand) get the space the format puts after the colon."""
    history = ""
    for m in messages:
        content = m.content if isinstance(m.content, str) else "".join(
            part.get("text", "") for part in m.content or [] if isinstance(part, dict))
        role = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}[m.role]
        head = history + ("\n\n" if history else "") + f"{role}:"
        verbatim = content[:1].isspace() or (m.role == "assistant" and generated is not None
                                             and generated(head + content, len(head)))
        history = head + (content if verbatim else " " + content)
    return history + "\n\nAssistant:"


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.watts = energy.profile(settings.device).watts_per_core
        self.depth: dict[str, int] = {}
        self.pool = ModelPool(settings.models_dir, settings.budget, settings.pins, settings.keep_alive,
                              settings.threads)
        self.metrics = Metrics(self.pool.resident_bytes, settings.budget, lambda: dict(self.depth))
        self.pool.metrics = self.metrics

    # -- the model of a request, counted in its queue ------------------------------------------
    @asynccontextmanager
    async def model(self, model_id: str, kinds: tuple[str, ...]):
        model = self.pool.find(model_id)
        if model.kind not in kinds:
            what = {"rwkv": "an RWKV language model", "embedding": "a text encoder", "onnx": "an ONNX model"}
            raise HTTPError(400, f"the model {model_id} is {what[model.kind]}: use "
                            f"{'/v1/completions or /v1/chat/completions' if model.kind == 'rwkv' else '/v1/embeddings' if model.kind == 'embedding' else '/v2/models/' + model_id + '/infer'}",
                            code="wrong_model_kind")
        if self.depth.get(model_id, 0) >= self.settings.max_queue:
            raise HTTPError(503, f"the model {model_id} has {self.settings.max_queue} requests queued; retry shortly",
                            kind="server_error", code="queue_full", headers={"Retry-After": "1"})
        self.depth[model_id] = self.depth.get(model_id, 0) + 1
        try:
            resident, cold = await self.pool.acquire(model_id)
            try:
                yield resident, cold
            finally:
                self.pool.release(resident)
        finally:
            self.depth[model_id] -= 1

    def usage(self, prompt: int, completion: int, cached: int, cpu_s: float, cold: bool, load_s: float) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
                "energy_j": round(energy.estimate_energy_j(cpu_s, self.watts), 6), "energy_estimated": True,
                "cold_load": cold, **({"load_seconds": round(load_s, 4)} if cold else {})}

    # -- generation ----------------------------------------------------------------------------
    def _generation(self, body: _Generation, prompt: str, chat: bool) -> Generation:
        asked = body.max_completion_tokens or body.max_tokens or 256
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > 4:
            raise HTTPError(400, "stop takes at most 4 strings", code="invalid_stop")
        if chat:
            stop = stop + (CHAT_STOP,)
        sampling = Sampling(temperature=body.temperature, top_p=body.top_p, presence_penalty=body.presence_penalty,
                            frequency_penalty=body.frequency_penalty, seed=body.seed)
        return Generation(prompt, min(asked, self.settings.max_tokens), sampling, stop)

    async def generate(self, request: Request, body: _Generation, prompt: str | list[ChatMessage], chat: bool):
        """A completion of `prompt`, or (chat) of the conversation `prompt` holds."""
        started = time.perf_counter()
        generation = self._generation(body, prompt if isinstance(prompt, str) else "", chat)
        route = "chat" if chat else "completions"
        stream_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        context = self.model(body.model, ("rwkv",))
        resident, cold = await context.__aenter__()
        if not isinstance(prompt, str):   # rendered against this model's cached states
            generation.prompt = chat_prompt(prompt, resident.runner.cache.read_beyond)
        stream = Stream(generation, asyncio.get_running_loop())
        try:
            self.pool.make_room(resident, resident.runner.stream_bytes)
        except PoolBusy:
            await context.__aexit__(None, None, None)
            raise
        resident.runner.submit(stream)

        def chunk(text: str | None, finish: str | None) -> dict:
            if chat:
                delta = {"role": "assistant", "content": text} if text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                return {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [choice]}
            return {"id": stream_id, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]}

        async def events():
            """(text, finish_reason) until the end; the stream is cancelled if the consumer stops."""
            first = True
            try:
                while True:
                    kind, value = await stream.events.get()
                    if kind == "error":
                        status, message = value
                        raise HTTPError(status, message, kind="server_error" if status >= 500 else "invalid_request_error")
                    if kind == "text":
                        if first:
                            self.metrics.ttft.labels(body.model).observe(time.perf_counter() - started)
                            first = False
                        yield value, None
                    else:
                        yield None, value
                        return
            finally:
                stream.cancelled = True   # a no-op when it ended; else it leaves at the next token

        def finished(status: int) -> dict:
            usage = self.usage(stream.prompt_tokens, stream.completion_tokens, stream.cached_tokens, stream.cpu_s,
                               cold, resident.load_seconds)
            self.metrics.requests.labels(body.model, route, str(status)).inc()
            self.metrics.latency.labels(body.model, route).observe(time.perf_counter() - started)
            self.metrics.tokens.labels(body.model, "prompt").inc(stream.prompt_tokens)
            self.metrics.tokens.labels(body.model, "cached").inc(stream.cached_tokens)
            self.metrics.tokens.labels(body.model, "completion").inc(stream.completion_tokens)
            self.metrics.energy.labels(body.model).inc(usage["energy_j"])
            return usage

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            async def sse():
                try:
                    async for text, finish in events():
                        yield event(chunk(text, finish))
                    usage = finished(200)
                    if include_usage:
                        yield event({**chunk(None, None), "choices": [], "usage": usage})
                    yield event("[DONE]")
                except HTTPError as exc:
                    yield event({"error": {"message": exc.message, "type": exc.kind, "code": exc.code}})
                finally:
                    await context.__aexit__(None, None, None)

            return EventStream(sse())

        parts, finish = [], ["stop"]

        async def collect():
            async for text, reason in events():
                if text is not None:
                    parts.append(text)
                else:
                    finish[0] = reason
        try:
            collecting = asyncio.ensure_future(collect())
            while not collecting.done():   # a client that hangs up stops its generation at the next token
                await asyncio.wait({collecting}, timeout=0.5)
                if not collecting.done() and await request.is_disconnected():
                    stream.cancelled = True
            collecting.result()
            usage = finished(200)
        finally:
            if not collecting.done():   # this handler was cancelled
                stream.cancelled = True
                collecting.cancel()
            await context.__aexit__(None, None, None)
        finish = finish[0]
        text = "".join(parts)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}
            return {"id": stream_id, "object": "chat.completion", "created": created, "model": body.model,
                    "choices": [choice], "usage": usage}
        return {"id": stream_id, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], "usage": usage}

    # -- embeddings and KServe ---------------------------------------------------------------
    async def embeddings(self, body: EmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or len(texts) > 256:
            raise HTTPError(400, "input takes 1 to 256 texts", code="invalid_input")
        started = time.perf_counter()
        async with self.model(body.model, ("embedding",)) as (resident, cold):
            cpu = time.process_time()
            vectors, tokens = await _run(resident.runner, resident.runner.embed, texts)
            cpu_s = time.process_time() - cpu
        self.metrics.requests.labels(body.model, "embeddings", "200").inc()
        self.metrics.latency.labels(body.model, "embeddings").observe(time.perf_counter() - started)
        self.metrics.tokens.labels(body.model, "prompt").inc(tokens)
        usage = self.usage(tokens, 0, 0, cpu_s, cold, resident.load_seconds)
        self.metrics.energy.labels(body.model).inc(usage["energy_j"])
        del usage["completion_tokens"]
        return {"object": "list", "model": body.model, "usage": usage,
                "data": [{"object": "embedding", "index": i,
                          "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format
                          == "base64" else v.tolist()} for i, v in enumerate(vectors)]}

    async def infer(self, model_id: str, body: dict) -> dict:
        """body: an InferRequest as plain JSON values (validated by pydantic or by `_plain_infer`)."""
        feeds = {}
        for t in body["inputs"]:
            name, shape, datatype = t["name"], t["shape"], t["datatype"]
            if datatype not in DATATYPES:
                raise HTTPError(400, f"input {name}: datatype {datatype} is not one of {', '.join(DATATYPES)}")
            try:
                array = np.asarray(t["data"], dtype=DATATYPES[datatype])
                feeds[name] = array.reshape(shape)
            except (ValueError, TypeError, OverflowError):
                raise HTTPError(400, f"input {name}: data does not fill shape {shape} of {datatype}") from None
        outputs = [o.get("name") for o in body["outputs"]] if body.get("outputs") else None
        started = time.perf_counter()
        async with self.model(model_id, ("onnx", "embedding")) as (resident, cold):
            values = await _run(resident.runner, resident.runner.infer, feeds, outputs)
        self.metrics.requests.labels(model_id, "infer", "200").inc()
        self.metrics.latency.labels(model_id, "infer").observe(time.perf_counter() - started)
        return {"model_name": model_id, "model_version": "1", **({"id": body["id"]} if body.get("id") else {}),
                "outputs": [{"name": name, "shape": list(v.shape), "datatype": _DATATYPE_OF.get(v.dtype, "FP32"),
                             "data": v.ravel().tolist()} for name, v in values.items()]}


def _plain_infer(raw: bytes) -> dict | None:
    """An infer body, when it is exactly what InferRequest describes, with every value of the type it
    names (no coercion); else None, and the request goes the FastAPI way, whose validation explains."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("id", ""), (str, type(None))):
        return None
    inputs, outputs = body.get("inputs"), body.get("outputs")
    if not isinstance(inputs, list) or not inputs or not (outputs is None or isinstance(outputs, list) and
                                                            all(isinstance(o, dict) for o in outputs)):
        return None
    for t in inputs:
        if not (isinstance(t, dict) and type(t.get("name")) is str and type(t.get("datatype")) is str
                and isinstance(t.get("data"), list) and isinstance(t.get("shape"), list)
                and all(type(n) is int for n in t["shape"])):
            return None
    return body


def error_of(exc: Exception) -> tuple | None:
    """(status, message, kind, code, headers) of an error a route raises on purpose; None for a bug."""
    if isinstance(exc, HTTPError):
        return exc.status, exc.message, exc.kind, exc.code, exc.headers
    for kind, status, error_kind, code, headers in (
            (ModelNotFound, 404, "invalid_request_error", "model_not_found", None),
            (ModelTooLarge, 507, "server_error", "model_too_large", None),
            (ModelBroken, 500, "server_error", "model_load_failed", None),
            (PoolBusy, 503, "server_error", "busy", {"Retry-After": "1"}),
            (EdgewiseError, 400, "invalid_request_error", None, None)):
        if isinstance(exc, kind):
            return status, str(exc), error_kind, code, headers
    return None


async def _send_json(send, status: int, content, headers: dict | None = None) -> None:
    """What JSONResponse sends, without Starlette's route and middleware stack."""
    data = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


INLINE_SECONDS = 0.002   # a model this quick runs on the event loop: a hop to a thread costs more


async def _run(runner, fn, *args):
    """fn(*args) for `runner`: on the event loop when its runs take under INLINE_SECONDS (as timed so
    far), else on a worker thread, so that a slow model never stalls the other requests."""
    quick = getattr(runner, "typical_seconds", None)
    started = time.perf_counter()
    if quick is not None and quick < INLINE_SECONDS:
        result = fn(*args)
    else:
        result = await asyncio.to_thread(fn, *args)
    took = time.perf_counter() - started
    runner.typical_seconds = took if quick is None else 0.9 * quick + 0.1 * took
    return result


class _Guard:
    """ASGI middleware in front of every route: the API key and the request-body limit. A body is
    read whole (up to the limit) before the route sees it, so an oversized one gets 413 however it is
    sent (Content-Length or chunked)."""

    def __init__(self, app, settings: Settings, server: "Server | None" = None) -> None:
        self.app, self.settings, self.server = app, settings, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = dict(scope["headers"])
        key = self.settings.api_key
        if key and not path.startswith(PUBLIC):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return await _error(path, 401, "a valid API key is required: send Authorization: Bearer <key>",
                                    code="invalid_api_key")(scope, receive, send)
        limit = self.settings.max_body
        declared = headers.get(b"content-length")
        too_large = _error(path, 413, f"the request body is over {limit} bytes", code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await too_large(scope, receive, send)
        if self.server is not None and scope["method"] == "POST":
            found = _INFER.fullmatch(path)
            body_json = _plain_infer(body) if found else None
            if body_json is not None:
                return await self._infer(found.group(1), body_json, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _infer(self, model_id: str, body: dict, send) -> None:
        """POST /v2/models/{id}/infer straight from ASGI: the request is the same and so is the
        answer, but FastAPI's router, validation and middleware cost more than a small model's run."""
        try:
            answer = await self.server.infer(model_id, body)
        except Exception as exc:
            known = error_of(exc)
            if known is None:
                raise
            status, message, _, _, headers = known
            self.server.metrics.requests.labels(model_id, "infer", str(status)).inc()
            return await _send_json(send, status, {"error": message}, headers)
        await _send_json(send, 200, answer)


def create_app(settings: Settings) -> FastAPI:
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(app):
        if any(m.kind == "rwkv" for m in server.pool.catalog.values()):
            from edgewise.rwkv.tokenizer import world_tokenizer
            await asyncio.to_thread(world_tokenizer)   # once for every RWKV model, not inside a model's load
        await server.pool.load_pins()
        reaper = asyncio.ensure_future(server.pool.reap())
        yield
        reaper.cancel()
        server.pool.close()

    app = FastAPI(title="edgewise serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Many compressed models behind one OpenAI-compatible endpoint, in a byte budget.")
    app.state.server = server

    def failed(request: Request, status: int, *args, **kwargs) -> JSONResponse:
        model = request.path_params.get("model_id", "-")
        server.metrics.requests.labels(model, request.url.path.rsplit("/", 1)[-1], str(status)).inc()
        return _error(request.url.path, status, *args, **kwargs)

    async def known_error(request: Request, exc: Exception):
        return failed(request, *error_of(exc))

    for kind in (HTTPError, ModelNotFound, ModelTooLarge, ModelBroken, PoolBusy, EdgewiseError):
        app.add_exception_handler(kind, known_error)

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException):
        message = (f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail))
        return _error(request.url.path, exc.status_code, message, code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return failed(request, 400, f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "edgewise", "version": "1", "extensions": []}

    @app.get("/v2/models/{model_id}")
    async def model_metadata(model_id: str):
        async with server.model(model_id, ("onnx", "embedding")) as (resident, _):
            return resident.runner.metadata()

    @app.get("/v2/models/{model_id}/ready")
    async def model_ready(model_id: str):
        server.pool.find(model_id)
        return {"name": model_id, "ready": True}

    @app.post("/v2/models/{model_id}/infer")
    async def infer(model_id: str, body: InferRequest):
        # what _Guard did not take straight (a body needing pydantic's coercion): not FastAPI's encoder, it walks every float
        return JSONResponse(await server.infer(model_id, body.model_dump()))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": server.pool.describe(), "budget_bytes": settings.budget,
                "resident_bytes": server.pool.resident_bytes(), "reserved_bytes": server.pool.reserved_bytes}

    @app.get("/v1/models/{model_id}")
    async def one_model(model_id: str):
        server.pool.find(model_id)
        return next(m for m in server.pool.describe() if m["id"] == model_id)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt[:1])
        if isinstance(body.prompt, list) and len(body.prompt) > 1:
            raise HTTPError(400, "prompt: one prompt per request", code="invalid_prompt")
        return await server.generate(request, body, prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest):
        return await server.generate(request, body, body.messages, chat=True)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        return JSONResponse(await server.embeddings(body))

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    return _Guard(app, settings, server), app
