"""medtune serve: TARGET resolution, clear errors, and the real server (llama.cpp's llama-server for GGUF
files, ours for transformers folders) driven by the official `openai` client over HTTP on a free port."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from serve_fixtures import (  # noqa: F401 - a fixture
    child_processes,
    llama_server_available,
    running_server,
    serve_command,
    tiny_gguf_run,
)

from medtune import llamacpp
from medtune.errors import ArtifactError
from medtune.serve.gguf import offload_devices

needs_server = pytest.mark.skipif(not llama_server_available(), reason=f"llama.cpp's llama-server not built: {llamacpp.SETUP_HINT}")
API_KEY = "test-key-123"
LONG_QUESTION = "Describe the causes of fever in children. " * 80  # ~700 tokens, over --n-ctx 512


def _smollm2() -> str:
    from medtune.embedded import smollm2_gguf_path

    return str(smollm2_gguf_path())


def _client(url: str, key: str | None = API_KEY):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=120)


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# ---- TARGET resolution (no model is loaded) -----------------------------------------------------


def _fake_gguf(path, size: int = 64):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * size)
    return path


def test_run_directory_serves_each_gguf_under_its_quant_name(tmp_path):
    from medtune.serve.targets import resolve_serve_target

    run = tmp_path / "demo"
    for quant in ("F16", "Q4_K_M", "Q8_0"):
        _fake_gguf(run / "gguf" / f"demo-{quant}.gguf")
    (run / "gguf" / "Modelfile").write_text('FROM ./demo-Q8_0.gguf\nPARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\n')
    (run / "config.yaml").write_text("name: demo\ndata:\n  system_prompt: Think first.\n")
    (run / "manifest.json").write_text("{}")
    plan = resolve_serve_target(run)
    assert plan.kind == "gguf" and plan.title == "demo"
    assert plan.names == ["Q8_0", "F16", "Q4_K_M"]  # the Modelfile's file first
    assert plan.stop == ("<|im_end|>", "<|im_start|>")
    assert plan.system_prompt == "Think first."
    # The gguf/ folder itself and one of its files resolve the same way.
    assert resolve_serve_target(run / "gguf").names == plan.names
    single = resolve_serve_target(run / "gguf" / "demo-Q4_K_M.gguf")
    assert single.names == ["Q4_K_M"] and single.stop == plan.stop and single.title == "demo"


def test_merged_and_adapter_folders_are_transformers_targets(tmp_path, tiny_llama_dir):
    from medtune.serve.targets import resolve_serve_target

    assert resolve_serve_target(tiny_llama_dir).kind == "merged"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert resolve_serve_target(adapter).kind == "adapter"


def test_bad_targets_are_clear_errors(tmp_path):
    from medtune.serve.targets import resolve_serve_target

    with pytest.raises(ArtifactError, match="does not exist"):
        resolve_serve_target(tmp_path / "missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ArtifactError, match="not a .gguf file"):
        resolve_serve_target(tmp_path / "weights.bin")
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ArtifactError, match="fake.gguf is not a GGUF file"):
        resolve_serve_target(tmp_path / "fake.gguf")
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"has no GGUF exports .*medtune export.*or serve .*merged"):
        resolve_serve_target(run)


def test_a_file_that_is_not_gguf_is_set_aside_not_fatal(tmp_path):
    from medtune.serve.targets import resolve_serve_target

    run = tmp_path / "demo"
    _fake_gguf(run / "gguf" / "demo-Q8_0.gguf")
    (run / "gguf" / "demo-Q4_K_M.gguf").write_bytes(b"<html>not found</html>")
    (run / "manifest.json").write_text("{}")
    plan = resolve_serve_target(run)
    assert plan.names == ["Q8_0"]
    assert [name for name, _ in plan.skipped] == ["demo-Q4_K_M.gguf"] and "not a GGUF file" in plan.skipped[0][1]


def _cli_error(*args: str) -> str:
    done = subprocess.run(serve_command(*args), capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def test_cli_missing_target_is_one_red_line(tmp_path):
    assert "does not exist" in _cli_error(str(tmp_path / "nope"))


def test_busy_port_is_a_clear_error(tmp_path):
    from medtune.errors import ConfigError
    from medtune.serve import ServeOptions, serve

    _fake_gguf(tmp_path / "m.gguf")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is already in use"):
            serve(str(tmp_path / "m.gguf"), ServeOptions(port=port))  # refused before loading anything


@needs_server
def test_truncated_gguf_is_refused_before_serving(tmp_path):
    from medtune.serve import ServeOptions, serve

    data = open(_smollm2(), "rb").read(4 << 20)  # the first 4 MiB of a 94 MiB file
    (tmp_path / "cut.gguf").write_bytes(data)
    served = []
    with pytest.raises(ArtifactError, match=r"cut.gguf: llama.cpp cannot load this GGUF file .*truncated or corrupt"):
        serve(str(tmp_path / "cut.gguf"), ServeOptions(port=0), on_ready=lambda plan, url: served.append(url))
    assert not served


# ---- the real server: llama.cpp's for the embedded SmolLM2 GGUF ---------------------------------


@pytest.fixture(scope="module")
def smollm2_server():
    if not llama_server_available():
        pytest.skip(f"llama.cpp's llama-server not built: {llamacpp.SETUP_HINT}")
    with running_server(_smollm2(), "--api-key", API_KEY, "--n-ctx", "512", "--parallel", "4") as server:
        yield server


@pytest.mark.slow
def test_gguf_server_answers_the_openai_client(smollm2_server):
    import openai

    client = _client(smollm2_server.url)
    (model,) = [m.id for m in client.models.list().data]
    assert model == "SmolLM2-135M-Instruct.Q4_1"
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the normal body temperature?"}],
        max_tokens=12, temperature=0,
    )
    assert reply.choices[0].message.content.strip()
    assert 0 < reply.usage.completion_tokens <= 12 and reply.choices[0].finish_reason in ("stop", "length")
    # Streaming: the same answer arrives piece by piece (greedy decoding, same prompt).
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the normal body temperature?"}],
        max_tokens=12, temperature=0, stream=True,
    )
    pieces, finish = [], None
    for chunk in stream:
        pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        finish = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish)
    assert len(pieces) > 1 and finish in ("stop", "length")
    assert "".join(pieces) == reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


@pytest.mark.slow
def test_gguf_server_refuses_requests_without_the_key(smollm2_server):
    import openai

    for key in (None, "wrong-key"):
        with pytest.raises(openai.AuthenticationError):
            _client(smollm2_server.url, key).chat.completions.create(
                model="SmolLM2-135M-Instruct.Q4_1", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert _get(f"{smollm2_server.url}/v1/models")[0] == 401
    assert _get(f"{smollm2_server.url}/medtune/info")[0] == 401
    status, health = _get(f"{smollm2_server.url}/health")  # public, like llama.cpp's own server
    assert status == 200 and health["backend"] == "gguf"
    status, info = _get(f"{smollm2_server.url}/medtune/info", API_KEY)
    assert status == 200 and info["n_ctx"] == 512 and "not a medical device" in info["disclaimer"]


@pytest.mark.slow
def test_gguf_server_answers_400_to_an_over_long_prompt_and_keeps_serving(smollm2_server):
    import openai

    client = _client(smollm2_server.url)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="maximum context length is 512 tokens") as caught:
            client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", stream=stream, max_tokens=4,
                                           messages=[{"role": "user", "content": LONG_QUESTION}])
        assert caught.value.status_code == 400 and caught.value.code == "context_length_exceeded"
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", max_tokens=4,
                                           messages=[{"role": "user", "content": "Still there?"}])
    assert reply.choices[0].message.content


@pytest.mark.slow
def test_gguf_server_answers_a_prompt_longer_than_one_batch(smollm2_server):
    """Prompts are prefilled PROMPT_BATCH_TOKENS at a time (so prompts arriving together start in
    turn); one longer than that spans several batches and is answered like any other."""
    from medtune.serve.gguf import PROMPT_BATCH_TOKENS

    reply = _client(smollm2_server.url).chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": "Describe the causes of fever in children. " * 35}])
    assert PROMPT_BATCH_TOKENS < reply.usage.prompt_tokens < 512 and reply.choices[0].message.content


@pytest.mark.slow
def test_gguf_server_reports_metrics_and_the_context_it_enforces(smollm2_server):
    status, info = _get(f"{smollm2_server.url}/medtune/info", API_KEY)
    assert status == 200 and info["n_ctx"] == 512 and "not a medical device" in info["disclaimer"]
    request = urllib.request.Request(f"{smollm2_server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        metrics = response.read().decode()
    assert "llamacpp:prompt_tokens_total" in metrics and "llamacpp:requests_processing" in metrics


@pytest.mark.slow
@needs_server
def test_gguf_server_stops_cleanly_on_ctrl_c_and_sigterm(tmp_path):
    import psutil

    for stop in (signal.SIGINT, signal.SIGTERM):
        with running_server(_smollm2(), "--n-ctx", "256", "--parallel", "2") as server:
            assert _get(f"{server.url}/health")[0] == 200
            children = child_processes(server.process.pid)
            assert [c.name() for c in children] == ["llama-server"]
            code = server.stop(stop)
        assert code == 0, server.output()
        assert "server stopped" in server.output() and "Traceback" not in server.output()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"llama-server left running after {stop.name}: {alive}"


@pytest.mark.slow
@needs_server
def test_children_die_with_a_killed_server(tmp_path):
    """kill -9 gives medtune no chance to clean up: the kernel stops its llama-servers (PR_SET_PDEATHSIG)."""
    import psutil

    with running_server(_smollm2(), "--n-ctx", "256", "--parallel", "2") as server:
        children = child_processes(server.process.pid)
        assert children
        server.process.kill()
        server.process.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"llama-server outlived a killed medtune serve: {alive}"


# ---- a run directory: every quant loaded at once, each in its own llama-server ---------------------


def _fake_llama_server(tmp_path, listing: str):
    """A stand-in binary that prints `listing` for --list-devices, as llama.cpp's common_print_available_devices does."""
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\n")
    binary.chmod(0o755)
    return binary


def test_offload_devices_reads_llama_servers_device_list(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_ARG_DEVICE", raising=False)
    monkeypatch.delenv("LLAMA_ARG_N_GPU_LAYERS", raising=False)
    gpus = "Available devices:\n  CUDA0: NVIDIA H100 80GB HBM3 (81559 MiB, 80999 MiB free)\n  BLAS: OpenBLAS (0 MiB, 0 MiB free)\n"
    assert offload_devices(_fake_llama_server(tmp_path, gpus)) == ("CUDA0",)  # BLAS runs on the CPU
    assert offload_devices(_fake_llama_server(tmp_path, "Available devices:\n  (none)\n")) == ()
    monkeypatch.setenv("LLAMA_ARG_N_GPU_LAYERS", "0")  # llama.cpp's own switch keeps the servers on the CPU
    assert offload_devices(_fake_llama_server(tmp_path, gpus)) == ()
    monkeypatch.setenv("LLAMA_ARG_N_GPU_LAYERS", "all")
    monkeypatch.setenv("LLAMA_ARG_DEVICE", "none")
    assert offload_devices(_fake_llama_server(tmp_path, gpus)) == ()
    assert offload_devices(tmp_path / "missing") == ()


@pytest.mark.slow
def test_run_directory_serves_every_quant_at_once_without_reloads(tiny_gguf_run):
    with running_server(str(tiny_gguf_run), "--n-ctx", "256", "--parallel", "4") as server:
        client = _client(server.url, None)
        assert [m.id for m in client.models.list().data] == ["Q8_0", "F16"]  # the Modelfile's quant first
        children = child_processes(server.process.pid)
        assert len(children) == 2
        for model in ("Q8_0", "F16", "Q8_0", "F16"):
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                                   max_tokens=3, temperature=0)
            assert reply.model == model and 0 < reply.usage.completion_tokens <= 3
        # Same processes throughout (no reload on a switch), and each one served its own requests.
        assert child_processes(server.process.pid) == children
        for model in ("Q8_0", "F16"):
            request = urllib.request.Request(f"{server.url}/metrics?model={model}")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert re.search(r"^llamacpp:tokens_predicted_total [1-9]", response.read().decode(), re.MULTILINE)
        _, info = _get(f"{server.url}/medtune/info")
        assert info["system_prompt"] == "Answer briefly." and info["title"] == "tiny"
        # How the page's "compare all" asks the quants: in turn where llama-server has no device to offload to.
        devices = offload_devices(llamacpp.find_tool("llama-server"))
        assert info["devices"] == list(devices)
        assert info["compare"] == ("together" if devices else "in_turn")


@pytest.mark.slow
def test_concurrent_streaming_requests_all_complete(tiny_gguf_run):
    """More clients than slots, on both quants at once: every stream ends with a finish reason."""
    from concurrent.futures import ThreadPoolExecutor

    with running_server(str(tiny_gguf_run), "--n-ctx", "256", "--parallel", "4") as server:
        client = _client(server.url, None)

        def ask(i: int) -> tuple[str, str, int]:
            stream = client.chat.completions.create(
                model=("Q8_0", "F16")[i % 2], messages=[{"role": "user", "content": f"Question {i}: name a vitamin."}],
                max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True})
            text, finish, tokens = "", None, 0
            for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return text, finish, tokens

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(ask, range(12), timeout=300))
    assert all(finish in ("stop", "length") for _, finish, _ in results), results
    assert all(tokens > 0 for _, _, tokens in results), results
    assert "Traceback" not in server.output()


@pytest.mark.slow
@needs_server
def test_a_truncated_quant_does_not_stop_the_others(tmp_path, tiny_gguf_run):
    run = tmp_path / "tiny"
    shutil.copytree(tiny_gguf_run, run)
    good = (run / "gguf" / "tiny-Q8_0.gguf").read_bytes()
    (run / "gguf" / "tiny-Q4_0.gguf").write_bytes(good[: len(good) // 2])  # an interrupted copy
    with running_server(str(run), "--n-ctx", "256", "--parallel", "2") as server:
        client = _client(server.url, None)
        assert sorted(m.id for m in client.models.list().data) == ["F16", "Q8_0"]
        assert client.chat.completions.create(model="F16", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
        with pytest.raises(Exception, match="not served here"):
            client.chat.completions.create(model="Q4_0", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert re.search(r"not served: tiny-Q4_0.gguf: .*tiny-Q4_0.gguf: llama.cpp cannot load this GGUF file .*truncated or corrupt",
                     server.output().replace("\n", " ")), server.output()


@pytest.mark.slow
@needs_server
def test_gguf_backend_adds_the_runs_stop_strings(tiny_gguf_run):
    from medtune.serve.gguf import GGUFBackend
    from medtune.serve.requests import RequestRejected
    from medtune.serve.targets import resolve_serve_target

    backend = GGUFBackend(resolve_serve_target(tiny_gguf_run), n_ctx=256, n_threads=1, parallel=1)
    try:
        checked = backend.check("/v1/chat/completions", {"model": "F16", "messages": [{"role": "user", "content": "hi"}], "stop": "END"})
        assert checked["stop"] == ["END", "<|im_end|>", "<|im_start|>"]
        assert backend.check("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})["model"] == "Q8_0"
        with pytest.raises(RequestRejected) as caught:
            backend.check("/v1/completions", {"model": "Q2_K", "prompt": "fever"})
        assert caught.value.status == 404
        assert backend.n_ctx == 256
    finally:
        backend.close()


# ---- transformers folders: our own small OpenAI-schema app --------------------------------------


@pytest.mark.slow
def test_transformers_server_answers_the_openai_client(tiny_llama_dir):
    import openai

    with running_server(str(tiny_llama_dir), "--api-key", API_KEY, "--n-ctx", "256") as server:
        client = _client(server.url)
        (model,) = [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0)
        assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"
        assert reply.usage.prompt_tokens > 0
        status, info = _get(f"{server.url}/medtune/info", API_KEY)  # where the loaded model runs: the CPU here
        assert status == 200 and info["devices"] == [] and info["compare"] == "in_turn"
        pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0, stream=True)
            if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 1 and "".join(pieces) == reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            _client(server.url, None).models.list()
        with pytest.raises(openai.BadRequestError, match="maximum context length is 256") as caught:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": LONG_QUESTION}], max_tokens=2, stream=True)
        assert caught.value.code == "context_length_exceeded"
        assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ok"}], max_tokens=2).choices
        code = server.stop()
    assert code == 0, server.output()


def test_port_zero_and_host_resolve_to_a_listening_socket():
    from medtune.serve.app import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()
