"""`jaxrnn serve`: trained runs over HTTP, in OpenAI's completions shape, with a page to play with them.

`POST /v1/completions` (model, prompt: a string or a list, max_tokens, temperature, top_p, top_k, n, seed,
stream), `GET /v1/models`, `GET /healthz`, and the page at `/`. Every choice of every request is a job of
its model's `engine.Engine`, so requests that arrive together decode in one compiled call. A request is
read into plain values and checked before anything runs (`parse_completion`); what it gets wrong is a 4xx
JSON error in OpenAI's form that names the field, and nothing it sends reaches the filesystem.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxrnn import run
from jaxrnn.data import preprocess
from jaxrnn.engine import Engine, Job
from jaxrnn.errors import JaxrnnError
from jaxrnn.loop import Trained

FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stream", "user"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond them it gets a 400 that names the flag that sets the limit."""

    max_prompt: int = 4096  # characters of one prompt
    max_tokens: int = 2000  # characters to generate, per choice
    max_n: int = 16  # choices per request, over all its prompts
    max_body: int = 1 << 20  # bytes of a request's body
    max_waiting: int = 4096  # choices queued before the server answers 503


@dataclass
class Served:
    """One run being served: its name in the API, the restored model and its engine."""

    name: str
    trained: Trained
    engine: Engine

    def card(self) -> dict[str, Any]:
        """Its entry of GET /v1/models: OpenAI's model object, and its step (epoch or optimizer step), val loss
        (nats per character), vocab size, cell and default prompt."""
        t = self.trained
        try:
            val_loss = math.log(t.val_ppl)
        except JaxrnnError:  # a run with no validation recorded still serves
            val_loss = None
        created = int(t.run_dir.stat().st_mtime) if t.run_dir is not None else 0
        return {"id": self.name, "object": "model", "created": created, "owned_by": "jaxrnn", "step": t.done,
                t.cfg.unit: t.done, "val_loss": val_loss, "vocab_size": len(t.vocab), "cell": t.cfg.cell,
                "prompt": t.prompt}


class ApiError(Exception):
    """A request the server refuses: its HTTP status, the message and the field it names."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": None}}, status_code=self.status)


@dataclass(frozen=True)
class Completion:
    """A checked completion request."""

    served: Served
    prompts: list[str]  # as the run's corpus reads them
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    seed: int
    stream: bool


def _number(body: dict, name: str, default: Any, kind: type, low: float, high: float, hint: str) -> Any:
    """body[name] (else the default) as an int or a finite float in [low, high]; else a 400 naming it."""
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {v!r}", name)
    if not (math.isfinite(v) and low <= v <= high):
        raise ApiError(400, f"'{name}' must be in [{low}, {high}], got {v!r}; {hint}", name)
    return kind(v)


def parse_completion(body: Any, runs: dict[str, Served], limits: Limits) -> Completion:
    """The request body (parsed JSON) as a Completion, or an ApiError that names what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object such as {\"model\": ..., \"prompt\": \"...\"}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(400, f"unsupported field {unknown[0]!r}; this server reads {', '.join(sorted(FIELDS))}",
                       unknown[0])
    name = body.get("model")
    if name is None and len(runs) == 1:
        name = next(iter(runs))
    if not isinstance(name, str):
        raise ApiError(400, f"'model' must name a served model: {', '.join(runs)}", "model")
    if name not in runs:
        raise ApiError(404, f"no model {name!r} is served; GET /v1/models lists {', '.join(runs)}", "model",
                       "not_found_error")
    served = runs[name]
    prompt = body.get("prompt", served.trained.prompt)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
    for p in prompts:
        if not p:
            raise ApiError(400, "a prompt is empty; send at least one character", "prompt")
        if len(p) > limits.max_prompt:
            raise ApiError(400, f"a prompt has {len(p)} characters, more than this server's --max-prompt "
                           f"{limits.max_prompt}", "prompt")
    max_tokens = _number(body, "max_tokens", 16, int, 0, limits.max_tokens, "the server's --max-tokens sets the most")
    temperature = _number(body, "temperature", 1.0, float, 0, 100, "0 decodes greedily")
    top_p = _number(body, "top_p", 1.0, float, 0, 1, "1 keeps every character")
    top_k = _number(body, "top_k", 0, int, 0, 1 << 30, "0 keeps every character")
    n = _number(body, "n", 1, int, 1, limits.max_n, "the server's --max-n sets the most")
    seed = body.get("seed")
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else _number(body, "seed", 0, int, 0, 2**32 - 1,
                                                                                "pass a smaller seed")
    if top_p == 0:
        raise ApiError(400, "'top_p' must be above 0; 1 keeps every character", "top_p")
    if n * len(prompts) > limits.max_n:
        raise ApiError(400, f"{len(prompts)} prompts times n={n} is {n * len(prompts)} choices, more than this "
                       f"server's --max-n {limits.max_n}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {stream!r}", "stream")
    how = served.trained.cfg.preprocessing
    return Completion(served, [preprocess(p, how) for p in prompts], max_tokens, temperature, top_p, top_k, n,
                      seed, stream)


class Pending:
    """A completion's jobs on its engine, and their characters as they come back on the event loop."""

    def __init__(self, c: Completion) -> None:
        self.c = c
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.queue: asyncio.Queue[tuple[int, np.ndarray, bool]] = asyncio.Queue()
        self.loop, vocab = asyncio.get_running_loop(), c.served.trained.vocab
        self.held: list[list[np.ndarray]] = [[] for _ in range(len(c.prompts) * c.n)]
        choices = [(i * c.n + j, prompt) for i, prompt in enumerate(c.prompts) for j in range(c.n)]  # OpenAI's order
        self.jobs = [Job(vocab.encode(prompt), c.max_tokens, functools.partial(self._put, index), c.temperature,
                         c.top_k, c.top_p, c.seed, index) for index, prompt in choices]

    def _put(self, index: int, ids: np.ndarray, done: bool) -> None:
        """A job's characters, from the engine's thread onto the request's event loop: each chunk's when
        streaming, else all at once when done (one wake-up of the loop a choice, not one a chunk)."""
        if not self.c.stream:
            self.held[index].append(ids)
            if not done:
                return
            ids = np.concatenate(self.held[index])
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, ids, done))
        except RuntimeError:  # the loop has closed (the server stopped): nobody is waiting
            pass

    def submit(self, limits: Limits) -> None:
        engine = self.c.served.engine
        if engine.failed is not None or not engine.thread.is_alive():
            raise ApiError(500, f"this model's engine has stopped ({engine.failed!r}); restart the server",
                           None, "server_error")
        if engine.waiting.qsize() + len(self.jobs) > limits.max_waiting:
            raise ApiError(503, "the server is busy; try again shortly", None, "server_error")
        if self.c.max_tokens == 0:  # nothing to make: answered without the engine
            for job in self.jobs:
                job.emit(np.zeros(0, np.int32), True)
            return
        for job in self.jobs:
            engine.submit(job)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled.set()

    async def pieces(self):
        """(choice index, text, done) as each chunk's characters arrive, until every choice is done."""
        left, vocab = len(self.jobs), self.c.served.trained.vocab
        while left:
            index, ids, done = await self.queue.get()
            left -= done
            yield index, vocab.decode(ids), done

    def head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.c.served.name}


def _choice(index: int, text: str, done: bool) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": "length" if done else None}


def build_app(runs: dict[str, Served], limits: Limits = Limits()) -> Starlette:
    """The ASGI app serving `runs` (each engine started by the caller) within `limits`."""
    page = resources.files("jaxrnn").joinpath("page.html").read_text()

    async def completions(request: Request) -> Response:
        try:
            size = int(request.headers.get("content-length") or 0)
            if size > limits.max_body:
                raise ApiError(413, f"the body is {size} bytes, more than {limits.max_body}")
            raw = await request.body()
            if len(raw) > limits.max_body:
                raise ApiError(413, f"the body is over {limits.max_body} bytes")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the body is not JSON ({e})") from None
            c = parse_completion(body, runs, limits)
            req = Pending(c)
            req.submit(limits)
        except ApiError as e:
            return e.response()
        if c.stream:
            return StreamingResponse(_events(req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts = [""] * len(req.jobs)
        try:
            async for index, text, _ in req.pieces():
                texts[index] += text
        finally:
            req.cancel()
        made = c.max_tokens * len(req.jobs)
        used = sum(len(p) for p in c.prompts) * c.n
        return JSONResponse({**req.head(), "choices": [_choice(i, t, True) for i, t in enumerate(texts)],
                             "usage": {"prompt_tokens": used, "completion_tokens": made, "total_tokens": used + made}})

    async def _events(req: Pending):
        try:
            async for index, text, done in req.pieces():
                yield f"data: {json.dumps({**req.head(), 'choices': [_choice(index, text, done)]})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # a client gone mid-stream: its slots are freed at the engine's next chunk
            req.cancel()

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [s.card() for s in runs.values()]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(runs),  # each model's slots decoding and jobs queued
                             "busy": {n: s.engine.busy for n, s in runs.items()},
                             "waiting": {n: s.engine.waiting.qsize() for n, s in runs.items()}})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return ApiError(status, f"{request.method} {request.url.path} is not served; POST /v1/completions, "
                        "GET /v1/models, GET /healthz or GET /").response()

    routes = [Route("/", index), Route("/healthz", healthz), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def restore(run_dirs: list[str], step: int | str | None, max_batch: int) -> dict[str, Served]:
    """Each run restored, named by its directory, with its engine compiled (not yet started)."""
    runs: dict[str, Served] = {}
    for d in run_dirs:
        name = Path(d).resolve().name
        if name in runs:
            raise JaxrnnError(f"two runs are named {name!r}; serve runs whose directories have different names")
        trained = run.load(d, step)
        engine = Engine(trained.model, trained.params, trained.cfg.precision, max_batch)
        engine.warm()
        runs[name] = Served(name, trained, engine)
    return runs


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: any free port), or the error that says which to pass. Taken
    before the runs are restored, so a port in use is said at once; clients that come before the server is
    ready wait in its backlog."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise JaxrnnError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass --port with a free port, "
                          "or --host with an address of this machine") from None
    return sock


class _Signalled(Exception):
    pass


def serve_forever(runs: dict[str, Served], sock: socket.socket, limits: Limits) -> int:
    """Serve on `sock` until SIGINT or SIGTERM, then finish the requests in flight and stop the engines."""
    sys.setswitchinterval(2e-4)  # the engine's thread gets the GIL back from the event loop's within 0.2 ms, not 5
    bound = sock.getsockname()
    where = f"http://{bound[0] if ':' not in bound[0] else f'[{bound[0]}]'}:{bound[1]}/"
    config = uvicorn.Config(build_app(runs, limits), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=None)

    def signalled(signum, frame):
        raise _Signalled(signum)

    for s in (signal.SIGINT, signal.SIGTERM):  # uvicorn handles them while it serves, then raises them again here
        signal.signal(s, signalled)
    for served in runs.values():
        served.engine.start()
    names = ", ".join(f"{s.name} ({s.trained.cfg.unit} {s.trained.done})" for s in runs.values())
    print(f"jaxrnn: serving {names} at {where} (ready)", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
        how = "stopped"
    except _Signalled as e:
        how = f"stopped by {signal.Signals(e.args[0]).name}"
    finally:
        for served in runs.values():
            served.engine.stop()
    print(f"jaxrnn: {how}; the requests in flight were answered", file=sys.stderr, flush=True)
    return 0
