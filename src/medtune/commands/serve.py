"""Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) with a chat page at /.

TARGET: a run directory (every GGUF in its gguf/, all loaded at once, each under its quant name:
pick one with the request's `model`), a .gguf file, or a merged or adapter folder (transformers).
GGUF files are served by llama.cpp's own llama-server: continuous batching over --parallel slots,
Prometheus metrics at /metrics?model=NAME. Listens on 127.0.0.1 unless --host says otherwise; with
--api-key every API request must send `Authorization: Bearer KEY`. Ctrl-C stops it and every
llama-server it started."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtune.ui import console, err_console


def command(
    target: Annotated[Path, typer.Argument(help="A run directory, a .gguf file, a merged model folder or an adapter folder.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="MEDTUNE_API_KEY", help="Refuse API requests without this bearer key (401).", show_default=False)] = None,  # noqa: UP045
    n_ctx: Annotated[int, typer.Option("--n-ctx", min=256, help="Context length per request in tokens; longer prompts get HTTP 400.")] = 4096,
    parallel: Annotated[int, typer.Option(min=1, help="GGUF: requests decoded together per model (each holds --n-ctx tokens of KV cache).")] = 8,
    threads: Annotated[Optional[int], typer.Option(min=1, help="GGUF: CPU threads per model (default: all cores).")] = None,  # noqa: UP045
    log_level: Annotated[str, typer.Option(help="Server log level (info shows every request).")] = "warning",
) -> None:
    # serve pulls the server's packages (the serve extra): only when the command runs.
    from medtune.serve import ServeOptions, serve

    def ready(plan, url: str) -> None:
        models = ", ".join(plan.names)
        console.print(f"[bold]medtune serve[/bold] {target} ({plan.kind}: {models})", highlight=False, soft_wrap=True)
        for name, why in plan.skipped:
            err_console.print(f"[yellow]not served: {name}: {why}[/yellow]", highlight=False, soft_wrap=True)
        console.print(f"serving on {url}  (chat page: {url}/ , API: {url}/v1)", highlight=False, soft_wrap=True)
        if api_key:
            console.print("API requests need the header 'Authorization: Bearer <key>'", highlight=False)
        console.file.flush()

    options = ServeOptions(host=host, port=port, api_key=api_key or None, n_ctx=n_ctx, n_threads=threads, parallel=parallel)
    err_console.print(f"loading {target}", highlight=False, soft_wrap=True)
    serve(str(target), options, on_ready=ready, log_level=log_level)
    err_console.print("server stopped")
