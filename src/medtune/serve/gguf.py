"""GGUF targets: llama.cpp's own `llama-server`, one process per file, behind medtune's front app.

Each GGUF file gets its own `llama-server` (continuous batching over `parallel` slots, each slot a
full `n_ctx` of KV cache, the file's own chat template through Jinja, `--metrics`), listening on a
free port of 127.0.0.1 behind a random key only this process knows. (Not a Unix socket: over one,
this llama-server dropped about 1 connection in 15 without a response; over TCP none.) The front
(`medtune.serve.app`) keeps the API key, the page and /v1/models; this module routes each request
to the server of its `model` and streams the answer back unchanged. Every quant of a run stays
loaded: switching quants costs nothing.

Why one server per file and not llama-server's router mode (`--models-dir`/`--models-preset`): the
router is a second HTTP hop in front of per-model child servers of its own (the same processes as
here), names models by file or preset section instead of by quant, and its children inherit its
arguments; medtune already needs a front for the page, the API key checks, the 404 for unknown
models and the run's stop strings, so it routes by itself (a dictionary lookup) and owns every
child process: Ctrl-C or SIGTERM stops them all, and the kernel stops them if medtune is killed.

Checked or changed on the way in (`check`): an unknown `model` is a 404 (llama-server would answer
with its only model); the run's stop strings (its Modelfile) are added to chat requests. On the
way out: llama-server's own error for a prompt longer than the context (HTTP 400 with both counts)
is reworded as OpenAI's `context_length_exceeded`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medtune import llamacpp
from medtune.errors import ArtifactError, ToolError
from medtune.serve.requests import SERVE_HINT, context_length_exceeded, unknown_model
from medtune.serve.targets import ServedModel, ServePlan

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
LOAD_TIMEOUT_S = 600  # a large F16 file on a slow disk still loads well within this
STOP_TIMEOUT_S = 10
# Tokens per llama-server batch (its --batch-size; llama.cpp's default is 2048). A prompt in a batch
# gets its first token only when the whole batch is done, so with 2048, 8 chat prompts arriving
# together (~120 tokens each) were prefilled as one batch and all waited for all of it: time to
# first token p50 1.3-1.6 s at 8 clients on 2 cores. With 256 (about two such prompts a batch) they
# start in turn: 0.71-0.96 s (benchmarks/serve_bench.py), tokens/s the same within the noise; a lone
# long prompt prefills ~5% slower (1420 tokens: 2.7-3.1 vs 2.6-2.9 s). 128: 0.47-0.59 s, but ~15%.
PROMPT_BATCH_TOKENS = 256


@dataclass
class ModelServer:
    """One running llama-server: the model it serves, its URL, its process and its log file."""

    model: ServedModel
    url: str
    process: subprocess.Popen
    log: Path
    n_ctx: int = 0
    client: Any = None  # httpx.AsyncClient, made in the event loop on first use


def server_arguments(model: ServedModel, port: int, key: str, *, n_ctx: int, parallel: int, threads: int) -> list[str]:
    """llama-server's command line for one file (without the binary)."""
    return [
        "--model", str(model.path), "--alias", model.name,
        "--host", "127.0.0.1", "--port", str(port), "--api-key", key,
        # Each slot gets a whole n_ctx of KV cache (no unified pool that concurrent long requests could
        # exhaust), so a request fits exactly when its prompt is under n_ctx, however busy the server.
        "--parallel", str(parallel), "--ctx-size", str(n_ctx * parallel), "--no-kv-unified", "--cont-batching",
        "--batch-size", str(PROMPT_BATCH_TOKENS),
        "--threads", str(threads), "--threads-batch", str(threads),
        # One HTTP thread per slot plus room for queued and quick requests (each streamed answer holds one).
        "--threads-http", str(2 * parallel + 4),
        "--jinja",  # the file's own tokenizer.chat_template
        "--reasoning-format", "none",  # <think> stays in the text: the page shows reasoning apart itself
        "--metrics", "--no-webui",
        "--cache-ram", "0",  # no host-RAM prompt cache beside the KV cache (8 GiB per server by default)
    ]


def offload_devices(binary: Path) -> tuple[str, ...]:
    """The accelerators llama-server offloads the model to (its `--list-devices`), e.g. ("CUDA0",);
    empty on a CPU-only build or machine, or when llama.cpp's own switches keep it on the CPU
    (LLAMA_ARG_DEVICE=none, LLAMA_ARG_N_GPU_LAYERS=0: the servers inherit medtune's environment).

    medtune passes no --n-gpu-layers, so llama-server's default ("auto") offloads to these when any."""
    if os.environ.get("LLAMA_ARG_DEVICE", "").strip().lower() == "none" or os.environ.get("LLAMA_ARG_N_GPU_LAYERS", "").strip() == "0":
        return ()
    try:
        listed = subprocess.run([str(binary), "--list-devices"], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    # "Available devices:" then "  CUDA0: NVIDIA H100 (81559 MiB, 80000 MiB free)" per device, or "  (none)".
    names = [m.group(1) for m in re.finditer(r"^\s+([^\s:()]+): ", listed.stdout, re.MULTILINE)]
    return tuple(n for n in names if not n.upper().startswith("BLAS"))  # BLAS is a CPU library, not a device


def default_threads() -> int:
    """All cores this process may use (llama-server's decode threads)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class GGUFBackend:
    """The plan's GGUF files, each in its own llama-server; `app` routes requests to them.

    After construction, `plan` lists the files actually served and, in `skipped`, each file that
    could not be (a truncated or corrupt file in a run's gguf/ does not stop the others).
    Raises ToolError when llama-server or httpx is missing, ArtifactError when no file loads.
    """

    kind = "gguf"
    # On the CPU every llama-server decodes with all cores (--threads), so models that answer at once
    # spin-wait on each other: the page's "compare all" of the demo's 3 quants on 2 cores took
    # 6-31 s until all were done, against 2.1-2.5 s one after another (the page now asks them in
    # turn there: /medtune/info's "compare"). With a GPU they share the device instead. Load on ONE
    # model is what continuous batching is for, and keeps every core.

    def __init__(self, plan: ServePlan, *, n_ctx: int, n_threads: int | None, parallel: int):
        try:
            import httpx  # noqa: F401 - the proxy's client (an optional dependency: the serve extra)
        except ImportError as exc:
            raise ToolError(f"the server cannot start ({exc}); {SERVE_HINT}") from exc
        binary = llamacpp.find_tool("llama-server")
        self.workdir = Path(tempfile.mkdtemp(prefix="medtune-serve-"))
        self.key = secrets.token_urlsafe(24)  # between this process and its llama-servers only
        self.servers: dict[str, ModelServer] = {}
        self.started: list[ModelServer] = []
        threads = n_threads or default_threads()
        self.devices = offload_devices(binary)
        self.models_answer_together = bool(self.devices)
        try:
            for i, model in enumerate(plan.models):
                self.started.append(self._start(binary, i, model, n_ctx=n_ctx, parallel=parallel, threads=threads))
            self._wait_for_all(plan)
        except BaseException:
            self.close()
            raise
        self.plan = replace(plan, models=tuple(s.model for s in self.servers.values()), skipped=tuple(self.skipped))
        self.n_ctx = min(s.n_ctx for s in self.servers.values())
        self.app = self._proxy_app()

    # ---- the child processes ------------------------------------------------------------------
    def _wait_for_all(self, plan: ServePlan) -> None:
        """Keep the servers that load; a file that fails is set aside with llama.cpp's reason (a lone
        file's failure is the error itself)."""
        self.skipped = list(plan.skipped)
        for server in self.started:
            try:
                self._wait_until_ready(server)
            except ArtifactError as exc:
                _stop(server.process)
                if len(plan.models) == 1:
                    raise
                self.skipped.append((server.model.path.name, str(exc)))
                continue
            self.servers[server.model.name] = server
        if not self.servers:
            raise ArtifactError("no GGUF file could be served:\n" + "\n".join(f"  {name}: {why}" for name, why in self.skipped))

    def _start(self, binary: Path, index: int, model: ServedModel, **settings: int) -> ModelServer:
        port, log = _free_port(), self.workdir / f"{index}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                [str(binary), *server_arguments(model, port, self.key, **settings)],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches medtune, which stops them in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no Python locks; spawned before the server threads start
            )
        return ModelServer(model, f"http://127.0.0.1:{port}", process, log)

    def _wait_until_ready(self, server: ModelServer) -> None:
        """Poll /health until the model is loaded; ArtifactError with llama.cpp's reason if it exits."""
        import httpx

        deadline = time.monotonic() + LOAD_TIMEOUT_S
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=10, trust_env=False) as client:
            while time.monotonic() < deadline:
                if server.process.poll() is not None:
                    raise ArtifactError(_load_failure(server))
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/health").status_code == 200:
                        props = client.get("/props").json()
                        server.n_ctx = int(props.get("default_generation_settings", {}).get("n_ctx") or 0)
                        return
                time.sleep(0.1)
        raise ArtifactError(f"{server.model.path}: llama-server did not finish loading it within {LOAD_TIMEOUT_S} s")

    def close(self) -> None:
        """Stop every llama-server (SIGTERM to its process group, SIGKILL after a grace period)."""
        for server in self.started:
            _stop(server.process)
        self.servers, self.started = {}, []
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- requests -----------------------------------------------------------------------------
    def check(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Pick the model (404 for an unknown one) and add the run's stop strings to chat requests."""
        name = payload.get("model") or self.plan.models[0].name
        if name not in self.servers:
            raise unknown_model(str(name), list(self.servers))
        payload = {**payload, "model": name}
        if path in CHAT_PATHS and self.plan.stop:
            asked = payload.get("stop")
            asked = [asked] if isinstance(asked, str) else list(asked or [])
            payload["stop"] = list(dict.fromkeys([*asked, *self.plan.stop]))
        return payload

    def _proxy_app(self):
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST", "DELETE"])])

    async def _forward(self, request):
        import httpx
        from starlette.responses import JSONResponse, Response, StreamingResponse

        body = await request.body()
        if request.method == "POST":
            name = json.loads(body).get("model")  # set by `check`, which saw this body first
        else:
            name = request.query_params.get("model") or self.plan.models[0].name
        server = self.servers.get(name)
        if server is None:
            error = unknown_model(str(name), list(self.servers))
            return JSONResponse(error.body(), status_code=error.status)
        if server.client is None:
            # No kept-alive connections: llama-server's HTTP threads would sit on idle ones.
            server.client = httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=httpx.Timeout(None, connect=30),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0), trust_env=False,
            )
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "accept")}
        upstream = server.client.build_request(request.method, request.url.path, params=request.query_params,
                                               content=body, headers=headers)
        response = await server.client.send(upstream, stream=True)
        if response.status_code >= 400:
            data = await response.aread()
            await response.aclose()
            return _error_response(response.status_code, data, request.url.path)
        media_type = response.headers.get("content-type")
        if not (media_type or "").startswith("text/event-stream"):  # a whole answer: pass it on in one piece
            data = await response.aread()
            await response.aclose()
            return Response(data, status_code=response.status_code, media_type=media_type)

        async def relay():
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()  # a client that went away: llama-server sees it and frees the slot

        return StreamingResponse(relay(), status_code=response.status_code, media_type=media_type)


def _error_response(status: int, data: bytes, path: str):
    """llama-server's error, with its context-size error reworded as OpenAI's (the counts kept)."""
    from starlette.responses import JSONResponse, Response

    try:
        error = json.loads(data).get("error") or {}
    except (ValueError, AttributeError):
        return Response(data, status_code=status)
    if error.get("type") == "exceed_context_size_error" and "n_ctx" in error:
        what = "messages" if path in CHAT_PATHS else "prompt"
        rejected = context_length_exceeded(int(error["n_ctx"]), int(error.get("n_prompt_tokens", 0)), what)
        return JSONResponse(rejected.body(), status_code=rejected.status)
    return JSONResponse({"error": error}, status_code=status)


def _load_failure(server: ModelServer) -> str:
    """Why a llama-server exited while loading: llama.cpp's own error lines from its log."""
    try:
        lines = server.log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    # llama.cpp logs "<time> E <function>: <message>"; its first error line is the cause, the rest follow from it.
    errors = [re.sub(r"^[\d.]+ E\s+", "", line.strip()) for line in lines if re.match(r"^[\d.]+ E ", line.strip())]
    errors = errors or [line.strip() for line in lines if "error" in line.lower() or "failed" in line.lower()]
    said = errors[0] if errors else f"exit code {server.process.returncode}"
    return (f"{server.model.path}: llama.cpp cannot load this GGUF file ({said}); it is truncated or corrupt "
            "(or the machine is out of memory): copy it again or rerun `medtune export`")


def _free_port() -> int:
    """A port of 127.0.0.1 that is free now (llama-server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel send SIGTERM when medtune dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
