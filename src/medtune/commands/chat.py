"""Chat with a model: a .gguf file (llama.cpp), a merged model folder, or an adapter folder (base + adapter).

Replies stream as they are generated, using the model's own chat template and stopping at its
end-of-turn token. With --prompt: answer once and exit. Without: an interactive chat
(/reset clears the conversation, /exit or Ctrl-D quits)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from medtune.ui import err_console


def command(
    target: Annotated[Path, typer.Argument(help="A .gguf file, a merged model folder, or an adapter folder.", show_default=False)],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Ask this once and exit.")] = None,  # noqa: UP045
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,  # noqa: UP045
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 0.9,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest reply in tokens.")] = 1024,
    n_ctx: Annotated[int, typer.Option("--n-ctx", min=256, help="Context length (GGUF).")] = 4096,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (GGUF; default: automatic).")] = None,  # noqa: UP045
) -> None:
    # chat loads llama.cpp or torch: only when the command runs, so that `medtune --help` answers at once.
    from medtune.chat import ChatModel, Reply, Sampling

    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    with err_console.status(f"loading {target}"):
        model = ChatModel(target, n_ctx=n_ctx, n_threads=threads)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def answer(text: str) -> None:
        history.append({"role": "user", "content": text})
        reply, pieces = Reply(), []
        for piece in model.stream(history, sampling, reply):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(pieces)})
        ending = "stopped at end-of-turn" if reply.stopped_on_eos else f"cut at --max-tokens {max_tokens}"
        err_console.print(f"[dim]({reply.tokens} tokens, {ending})[/dim]")

    try:
        if prompt is not None:
            answer(prompt)
            return
        err_console.print(f"[bold]medtune chat[/bold] with {target} ({model.kind}); /reset clears, /exit or Ctrl-D quits")
        while True:
            try:
                text = input("> ").strip()
            except EOFError:
                break
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                del history[1 if system else 0 :]
                continue
            if text:
                answer(text)
    finally:
        model.close()
