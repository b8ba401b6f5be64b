"""GGUF targets: llama.cpp's own OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`).

Its app serves /v1/chat/completions (streaming and not) and /v1/completions with the file's chat
template; its config-file mode (one ModelSettings per file, `model_alias` = the quant name) serves
every GGUF of a run. What it leaves to us, checked here before a request reaches it:
- a `model` it does not know silently falls back to the first file: we answer 404 instead;
- a prompt longer than the context fails only once a stream has started (HTTP 200, then a broken
  stream): we count the rendered prompt first and answer 400 with OpenAI's context_length_exceeded;
- the run's stop strings (its Modelfile) are added to every chat request.
Its own settings that matter here: `interrupt_requests` is off (by default a new request cuts the
stream in progress), `logits_all` is off (it would keep n_ctx x vocab floats), and requests take
turns on one model in memory; asking for another quant reloads (the page's model picker).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.errors import ArtifactError, ToolError
from medtune.serve.targets import ServePlan

SERVE_HINT = "install the server's dependencies: pip install -e '.[serve]' (fastapi, uvicorn, sse-starlette, ...)"
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
COMPLETION_PATHS = ("/v1/completions", "/completions")


@dataclass
class RequestRejected(Exception):
    """A request answered by us with an OpenAI-style error instead of reaching the model."""

    status: int
    message: str
    code: str
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}}


class PromptCounter:
    """Counts a request's prompt tokens for one GGUF file with a vocabulary-only llama.cpp model.

    Loading the vocabulary also reads the whole file's layout, so it is the check that the file is
    complete: llama.cpp refuses a truncated GGUF here, before the server starts.
    """

    def __init__(self, path: Path):
        from medtune import llamacpp

        llama_cpp = llamacpp.load_runtime()
        with llamacpp.quiet_runtime() as log:
            try:
                self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=256, verbose=False)
            except (ValueError, RuntimeError) as exc:
                reasons = [line.strip() for line in log.getvalue().splitlines() if "error" in line.lower() or "failed" in line.lower()]
                raise ArtifactError(
                    f"{path}: llama.cpp cannot load this GGUF file ({'; '.join(reasons[-2:]) or exc}); it is truncated or "
                    "corrupt: copy it again or rerun `medtune export`"
                ) from exc
        if not self.llm.metadata.get("tokenizer.chat_template"):
            raise ArtifactError(f"{path}: the GGUF has no chat template (tokenizer.chat_template), so it cannot serve chat requests")
        self._lock = threading.Lock()

    def chat(self, payload: dict[str, Any]) -> int:
        from medtune.chat import gguf_prompt_tokens

        with self._lock:
            return gguf_prompt_tokens(self.llm, payload.get("messages") or [])

    def completion(self, prompt: str) -> int:
        with self._lock:
            return len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def close(self) -> None:
        self.llm.close()


class GGUFBackend:
    """llama.cpp's server app for the plan's GGUF files, plus the request checks it lacks."""

    kind = "gguf"

    def __init__(self, plan: ServePlan, *, n_ctx: int, n_threads: int | None, api_key: str | None):
        from medtune import llamacpp

        llamacpp.load_runtime()
        try:
            from llama_cpp.server.app import create_app
            from llama_cpp.server.settings import ModelSettings, ServerSettings
        except ImportError as exc:
            raise ToolError(f"llama.cpp's server cannot be imported ({exc}); {SERVE_HINT}") from exc
        self.plan = plan
        self.n_ctx = n_ctx
        self.counters: dict[str, PromptCounter] = {}
        try:
            for model in plan.models:
                self.counters[model.name] = PromptCounter(model.path)
        except ArtifactError:
            self.close()
            raise
        threads = n_threads or llamacpp.default_threads()
        settings = [
            ModelSettings(
                model=str(model.path),
                model_alias=model.name,
                chat_format="chat_template.default",  # the file's own template, never a built-in guess
                n_ctx=n_ctx,
                n_batch=min(n_ctx, 512),
                n_ubatch=min(n_ctx, 512),
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
            for model in plan.models
        ]
        server = ServerSettings(api_key=api_key, interrupt_requests=False)
        with llamacpp.quiet_runtime() as log:  # create_app loads the first file
            try:
                self.app = create_app(server_settings=server, model_settings=settings)
            except (ValueError, RuntimeError) as exc:
                tail = "\n".join(log.getvalue().strip().splitlines()[-3:])
                self.close()
                raise ToolError(f"llama.cpp's server cannot load {plan.models[0].path}: {exc}\n{tail}") from exc

    def check(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Validate one request body (see the module docstring); returns the body to pass on."""
        chat = path in CHAT_PATHS
        if not chat and path not in COMPLETION_PATHS:
            return payload
        name = payload.get("model") or self.plan.models[0].name
        counter = self.counters.get(name)
        if counter is None:
            raise RequestRejected(404, f"model {name!r} is not served here; models: {', '.join(self.counters)}", "model_not_found", "model")
        payload = {**payload, "model": name}
        try:
            if chat:
                tokens = counter.chat(payload)
            elif isinstance(payload.get("prompt"), str):
                tokens = counter.completion(payload["prompt"])
            else:
                return payload
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - the template rejected these messages (e.g. roles out of order)
            raise RequestRejected(400, f"the chat template cannot render these messages: {exc}", "invalid_messages", "messages") from exc
        if tokens >= self.n_ctx:
            what = "messages" if chat else "prompt"
            raise RequestRejected(
                400,
                f"This model's maximum context length is {self.n_ctx} tokens, but the {what} take {tokens} tokens. "
                f"Shorten the {what}, or restart the server with a larger --n-ctx.",
                "context_length_exceeded",
                what,
            )
        if chat and self.plan.stop:
            asked = payload.get("stop")
            asked = [asked] if isinstance(asked, str) else list(asked or [])
            payload["stop"] = list(dict.fromkeys([*asked, *self.plan.stop]))
        return payload

    def close(self) -> None:
        """Free the loaded model and the vocabularies (quietly: llama.cpp logs its buffers as it frees them)."""
        from medtune import llamacpp

        with llamacpp.quiet_runtime():
            for counter in self.counters.values():
                counter.close()
            self.counters = {}
            if getattr(self, "app", None) is not None:
                from llama_cpp.server import app as server_app

                # The server keeps its models in a module-level proxy (one app per process).
                proxy, server_app._llama_proxy = server_app._llama_proxy, None
                if proxy is not None:
                    proxy.free()
                self.app = None
