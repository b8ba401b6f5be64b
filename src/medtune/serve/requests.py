"""What both backends answer alike: OpenAI-style request errors, and the hint for missing packages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SERVE_HINT = "install the server's dependencies: pip install -e '.[serve]' (fastapi, uvicorn, httpx, ...)"


@dataclass
class RequestRejected(Exception):
    """A request answered with an OpenAI-style error instead of a completion."""

    status: int
    message: str
    code: str
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}}


def context_length_exceeded(n_ctx: int, tokens: int, what: str = "messages") -> RequestRejected:
    """HTTP 400 for a prompt that does not fit the context, with both counts (OpenAI's wording and code)."""
    return RequestRejected(
        400,
        f"This model's maximum context length is {n_ctx} tokens, but the {what} take {tokens} tokens. "
        f"Shorten the {what}, or restart the server with a larger --n-ctx.",
        "context_length_exceeded",
        what,
    )


def unknown_model(name: str, served: list[str]) -> RequestRejected:
    return RequestRejected(404, f"model {name!r} is not served here; models: {', '.join(served)}", "model_not_found", "model")
