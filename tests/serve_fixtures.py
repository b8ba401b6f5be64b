"""Helpers for the serving tests: `medtune serve` as a real subprocess on a free port, its child
processes, and a tiny run directory with two real GGUF quants (a tiny random Llama converted and
quantized by llama.cpp)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30) -> int:
        """SIGINT (Ctrl-C) or SIGTERM, then wait; returns the exit code (kills and fails loudly on a hang)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"medtune serve did not stop within {timeout} s of {sig.name}:\n{self.output()}") from None
        return self.process.returncode


def llama_server_available() -> bool:
    from medtune import llamacpp
    from medtune.errors import ToolError

    try:
        llamacpp.find_tool("llama-server")
    except ToolError:
        return False
    return True


def child_processes(pid: int) -> list:
    """The processes `pid` started (psutil.Process, sorted by pid)."""
    import psutil

    return sorted(psutil.Process(pid).children(recursive=True), key=lambda p: p.pid)


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "medtune.cli", "serve", *args]


@contextlib.contextmanager
def running_server(*args: str, timeout: float = 180) -> Iterator[RunningServer]:
    """Start `medtune serve ARGS --port 0`, wait for its 'serving on URL' line, stop it afterwards."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(serve_command(*args, "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()
    found: dict[str, str] = {}

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"serving on (http://\S+)", line)
            if match and not ready.is_set():
                found["url"] = match.group(1)
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    while not ready.wait(0.2):
        if time.monotonic() - started > timeout:
            process.kill()
            raise AssertionError(f"medtune serve did not start within {timeout} s:\n{''.join(lines)}")
    if "url" not in found:
        process.wait(10)
        raise AssertionError(f"medtune serve exited ({process.returncode}) before serving:\n{''.join(lines)}")
    server = RunningServer(found["url"], process, lines)
    try:
        yield server
    finally:
        if process.poll() is None:
            server.stop()
        reader.join(5)


def make_gguf_run(root: Path, tiny_llama_dir: Path, name: str = "tiny", quants: tuple[str, ...] = ("Q8_0",)) -> Path:
    """runs/<name>/ with gguf/<name>-F16.gguf, one file per quant, and the Modelfile export writes.

    The files come from llama.cpp's converter and quantizer, the Modelfile from medtune.ollama, so
    the server reads what a real export leaves (manifest.json and config.yaml are minimal).
    """
    from medtune.export import build_modelfile
    from transformers import AutoTokenizer

    from medtune import llamacpp
    from medtune.tokenizer import end_of_turn_token

    run = root / name
    folder = run / "gguf"
    folder.mkdir(parents=True)
    f16 = llamacpp.convert_to_gguf(tiny_llama_dir, folder / f"{name}-F16.gguf", "f16", {"general.name": name})
    for quant in quants:
        llamacpp.quantize_gguf(f16, folder / f"{name}-{quant}.gguf", quant)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    chosen = f"{name}-{quants[0]}.gguf" if quants else f16.name
    modelfile = build_modelfile(tokenizer, chosen, end_of_turn=end_of_turn_token(tokenizer), runtime_adds_bos=False)
    (folder / "Modelfile").write_text(modelfile.text, encoding="utf-8")
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "data": {"system_prompt": "Answer briefly."}}), encoding="utf-8")
    (run / "manifest.json").write_text('{"stages": {}}\n', encoding="utf-8")
    return run


@pytest.fixture(scope="session")
def tiny_gguf_run(tmp_path_factory, tiny_llama_dir) -> Path:
    """A run directory with tiny-F16.gguf and tiny-Q8_0.gguf, built once per test session.

    Each test module that imports this fixture gets its own copy of it, so the folder is kept under
    the session's base temp dir and reused once its marker file (written last) is there.
    """
    from medtune import llamacpp

    if not llamacpp.runtime_available() or not (llamacpp.converter_dir() / llamacpp.CONVERTER).is_file():
        pytest.skip(f"llama.cpp runtime or converter not installed: {llamacpp.SETUP_HINT}")
    if not llama_server_available():
        pytest.skip(f"llama.cpp's llama-server not built: {llamacpp.SETUP_HINT}")
    root = tmp_path_factory.getbasetemp() / "serve-runs"
    done = root / "built"
    if not done.is_file():
        if root.exists():
            import shutil

            shutil.rmtree(root)
        make_gguf_run(root, tiny_llama_dir)
        done.write_text("ok")
    return root / "tiny"
