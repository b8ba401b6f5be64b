"""`medtune serve`: an OpenAI-compatible server and a chat page for a run, a GGUF file or a model folder.

targets  TARGET (through rundir.open_artifact) -> the models to serve under their quant names, stop strings
gguf     llama.cpp's own llama-server, one process per GGUF file, and the router in front of them
hf       a small OpenAI-schema app over medtune.chat for merged and adapter folders
requests the errors both answer alike (404 unknown model, 400 over-long prompt)
app      the page, /health, /v1/models and the API key in front of either; binding and running
static/  the chat page: plain HTML, JS and CSS shipped as package data
"""

from __future__ import annotations

from collections.abc import Callable

from medtune.serve.app import (
    ServeOptions,
    bind_socket,
    create_app,
    load_backend,
    run_server,
)
from medtune.serve.targets import ServePlan, resolve_serve_target

__all__ = ["ServeOptions", "ServePlan", "resolve_serve_target", "serve"]


def serve(target: str, options: ServeOptions, *, on_ready: Callable[[ServePlan, str], None] = lambda plan, url: None,
          log_level: str = "warning") -> None:
    """Serve TARGET until interrupted (SIGINT/SIGTERM). `on_ready(plan, url)` runs once it listens.

    `plan` is what is served: a GGUF folder's files that cannot be loaded are in `plan.skipped`.
    Raises ArtifactError (missing target, not a GGUF, truncated file, run without exports),
    ConfigError (port busy), ToolError (llama.cpp or the server's packages missing).
    """
    plan = resolve_serve_target(target)
    sock = bind_socket(options.host, options.port)  # before loading: a busy port fails in a second
    backend = None
    try:
        backend = load_backend(plan, options)
        app = create_app(backend, options)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        on_ready(backend.plan, f"http://{shown}:{port}")
        run_server(app, sock, log_level=log_level)
    finally:
        sock.close()
        if backend is not None:
            backend.close()
