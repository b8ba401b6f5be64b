"""The served app: the chat page, /health, /v1/models and the API key, in front of a backend.

The backend (llama.cpp's llama-server processes for GGUF files, `medtune.serve.hf` for transformers
folders) is mounted under everything else and answers the OpenAI routes (and, for GGUF files,
llama-server's own: /metrics, /props, /tokenize, ... with `?model=NAME` for GETs). In front of it,
two ASGI layers: the API key (every route but the page, its static files and /health needs
`Authorization: Bearer KEY` when --api-key is set; 401 otherwise, as llama.cpp's own server does)
and the request check (a POST body must be a JSON object; the backend's `check` then rejects or
amends it: unknown model, stop strings).
"""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import signal
import socket
from dataclasses import dataclass
from importlib import resources
from typing import Any

from medtune.errors import ConfigError, ToolError
from medtune.serve.requests import SERVE_HINT, RequestRejected
from medtune.serve.targets import ServePlan

PUBLIC_PATHS = ("/", "/health", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
DISCLAIMER = (
    "Research model, not a medical device. Answers can be fluent, confident and wrong; do not use them "
    "for diagnosis or treatment, and ask a qualified health professional."
)
MAX_BODY_BYTES = 8 * 2**20


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the URL printed at start names it)
    api_key: str | None = None
    n_ctx: int = 4096  # per request (GGUF: every slot has this much KV cache)
    n_threads: int | None = None  # GGUF decode threads per model; None: all cores
    parallel: int = 8  # GGUF: requests decoded together per model (continuous batching)


def load_backend(plan: ServePlan, options: ServeOptions):
    """Load the plan's model(s): GGUFBackend or HFBackend. Raises ArtifactError/ToolError/ModelError.

    `backend.plan` is what it serves (a GGUF folder's unloadable files moved to `skipped`)."""
    if plan.kind == "gguf":
        from medtune.serve.gguf import GGUFBackend  # imports httpx (the serve extra)

        return GGUFBackend(plan, n_ctx=options.n_ctx, n_threads=options.n_threads, parallel=options.parallel)
    from medtune.serve.hf import HFBackend  # imports torch and transformers

    return HFBackend(plan, n_ctx=options.n_ctx)


def create_app(backend, options: ServeOptions):
    """The ASGI app serving `backend` (see the module docstring)."""
    try:
        from fastapi import FastAPI
        from fastapi.responses import FileResponse
        from fastapi.staticfiles import StaticFiles
    except ImportError as exc:
        raise ToolError(f"the server cannot start ({exc}); {SERVE_HINT}") from exc
    plan: ServePlan = backend.plan
    static = resources.files("medtune.serve") / "static"
    app = FastAPI(title=f"medtune serve: {plan.title}", docs_url=None, redoc_url=None, openapi_url=None)
    models = [
        {"id": m.name, "object": "model", "owned_by": "medtune", "created": 0, "file": m.path.name, "size_bytes": m.size_bytes}
        for m in plan.models
    ]

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def health():
        return {"status": "ok", "backend": backend.kind, "models": plan.names}

    # Answered here: the quant names, in the run's order, whatever the backend calls them.
    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": models}

    @app.get("/medtune/info")
    def info():
        return {
            "title": plan.title, "backend": backend.kind, "models": models, "default_model": plan.names[0],
            "system_prompt": plan.system_prompt or "", "n_ctx": backend.n_ctx, "disclaimer": DISCLAIMER,
            # Where the models run (empty: the CPU), and so how the page's "compare all" asks them:
            # "in_turn" on the CPU (models answering at once fight over the cores), else "together".
            "devices": list(backend.devices), "compare": "together" if backend.models_answer_together else "in_turn",
        }

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.mount("/", backend.app)
    checked = RequestCheck(app, backend.check)
    return ApiKeyCheck(checked, options.api_key)


class ApiKeyCheck:
    """ASGI layer: 401 for a request without `Authorization: Bearer KEY` (when a key is set)."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.api_key is None or _is_public(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if given.startswith("Bearer ") and secrets.compare_digest(given[7:].strip(), self.api_key):
            return await self.app(scope, receive, send)
        message = "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key given to --api-key"
        await _send_json(send, 401, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})


class RequestCheck:
    """ASGI layer: reads a POST's JSON body, lets `check(path, payload)` reject or amend it, passes it on."""

    def __init__(self, app, check):
        self.app, self.check = app, check

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                error = RequestRejected(413, f"request body over {MAX_BODY_BYTES // 2**20} MiB", "request_too_large")
                return await _send_json(send, 413, error.body())
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            error = RequestRejected(400, "the request body is not a JSON object", "invalid_json")
            return await _send_json(send, 400, error.body())
        try:
            payload = self.check(scope["path"], payload)  # a dictionary lookup: no thread needed
        except RequestRejected as rejected:
            return await _send_json(send, rejected.status, rejected.body())
        body = json.dumps(payload).encode("utf-8")
        headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the backend expects

        return await self.app(scope, replay, send)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _send_json(send, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port. Raises ConfigError when the port is taken or the host is not local."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: {host}:{port} is already in use; stop the other server or pick another port (--port 0 picks a free one)") from exc
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from exc
    # Accepted connections inherit this: without it every response (headers, then body, then each
    # streamed token) waits on the client's delayed ACK, ~40 ms per request measured here.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run_server(app, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve `app` on the bound socket until SIGINT/SIGTERM, then shut down gracefully and return."""
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn re-raises the signal after its graceful shutdown, so the process would die of it;
        # `medtune serve` returns normally instead (exit code 0, its own closing line).
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                            timeout_graceful_shutdown=5, lifespan="off")
    Server(config).run(sockets=[sock])
