"""Merged and adapter folders: a small FastAPI app speaking OpenAI's chat schema over `medtune.chat`.

The model is loaded once by `ChatModel` (the same target rules, chat template and end-of-turn
stop as `medtune chat`). Requests take turns on it (no batching here: GGUF files get llama-server's
continuous batching). Served: POST /v1/chat/completions (JSON, or server-sent events with
`stream: true`, the last event carrying `usage`, ended by `data: [DONE]`); /v1/models, /health and the page come from `medtune.serve.app`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medtune.chat import ChatModel, Reply, Sampling
from medtune.serve.requests import (
    RequestRejected,
    context_length_exceeded,
    unknown_model,
)
from medtune.serve.targets import ServePlan


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]] = ""

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat request that a local model honours; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # llama-cpp-python's server defaults, so both backends answer alike.
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    stop: str | list[str] | None = None


class HFBackend:
    """One transformers model (merged folder, or base + adapter) behind OpenAI's chat endpoint."""

    kind = "transformers"
    models_answer_together = False  # one model, whose requests take turns anyway

    def __init__(self, plan: ServePlan, *, n_ctx: int):
        from fastapi import FastAPI

        self.plan = plan
        self.name = plan.models[0].name
        self.model = ChatModel(plan.models[0].path)
        self.devices = () if self.model.device == "cpu" else (self.model.device,)
        window = self.model.context_length
        self.n_ctx = min(n_ctx, window) if window else n_ctx
        self._turn = threading.Lock()
        self.app = FastAPI(title="medtune (transformers)")
        self.app.add_api_route("/v1/chat/completions", self._chat, methods=["POST"])

    def check(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return payload  # requests are validated by the endpoint itself (pydantic + prompt length)

    def _chat(self, body: ChatCompletionRequest):
        from fastapi.responses import JSONResponse
        from sse_starlette.sse import EventSourceResponse

        try:
            if body.model and body.model != self.name:
                raise unknown_model(body.model, [self.name])
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            prompt_tokens = self.model.prompt_tokens(messages)
            if prompt_tokens >= self.n_ctx:
                raise context_length_exceeded(self.n_ctx, prompt_tokens)
        except RequestRejected as rejected:
            return JSONResponse(rejected.body(), status_code=rejected.status)
        limit = body.max_completion_tokens or body.max_tokens or 1024
        sampling = Sampling(temperature=body.temperature, top_p=body.top_p, max_tokens=min(limit, self.n_ctx - prompt_tokens))
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        outcome: dict[str, Any] = {}
        pieces = self._generate(messages, sampling, stops, outcome)
        if not body.stream:
            text = "".join(pieces)
            tokens, finish = outcome["tokens"], outcome["finish_reason"]
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens},
            }

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> dict[str, str]:
            import json

            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": self.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:  # on the last chunk, as llama-server sends it (the page counts tokens from it)
                data["usage"] = usage
            return {"data": json.dumps(data)}

        def events() -> Iterator[dict[str, str]]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                yield chunk({"content": piece})
            tokens = outcome["tokens"]
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
            yield chunk({}, outcome["finish_reason"], usage)
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), sep="\n")

    def _generate(self, messages: list[dict[str, str]], sampling, stops: list[str], outcome: dict[str, Any]) -> Iterator[str]:
        """Reply pieces, one request at a time; ends early at a stop string (which is not returned).

        Fills `outcome` with "tokens" (completion tokens) and "finish_reason" when done.
        """
        with self._turn:
            reply, text, sent = Reply(), "", 0
            stream = self.model.stream(messages, sampling, reply)
            try:
                for piece in stream:
                    text += piece
                    cut = min((text.find(s) for s in stops if s in text), default=-1)
                    if cut >= 0:
                        if cut > sent:
                            yield text[sent:cut]
                        outcome.update(tokens=reply.tokens, finish_reason="stop")
                        return
                    # Hold back a tail that could be the start of a stop string.
                    keep = max((len(s) - 1 for s in stops), default=0)
                    safe = max(sent, len(text) - keep)
                    if safe > sent:
                        yield text[sent:safe]
                        sent = safe
            finally:
                stream.close()  # ends generation early when the client went away
            if len(text) > sent:
                yield text[sent:]
            outcome.update(tokens=reply.tokens, finish_reason="stop" if reply.stopped_on_eos else "length")

    def close(self) -> None:
        self.model.close()
