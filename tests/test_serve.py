"""medtune serve: TARGET resolution, clear errors, and the real server (llama.cpp's for GGUF files, ours for
transformers folders) driven by the official `openai` client over HTTP on a free port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from serve_fixtures import running_server, serve_command, tiny_gguf_run  # noqa: F401 - a fixture

from medtune import llamacpp
from medtune.errors import ArtifactError

needs_runtime = pytest.mark.skipif(not llamacpp.runtime_available(), reason=f"llama.cpp runtime not installed: {llamacpp.SETUP_HINT}")
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


@needs_runtime
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
    if not llamacpp.runtime_available():
        pytest.skip(f"llama.cpp runtime not installed: {llamacpp.SETUP_HINT}")
    with running_server(_smollm2(), "--api-key", API_KEY, "--n-ctx", "512") as server:
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
@needs_runtime
def test_prompt_count_matches_what_llama_cpp_reports(smollm2_server):
    """The 400 check counts the prompt as llama.cpp's chat path does (else it would refuse too much or too little)."""
    from medtune.serve.gguf import PromptCounter

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name two causes of anaemia."}]
    reply = _client(smollm2_server.url).chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages, max_tokens=1)
    counter = PromptCounter(_smollm2())
    try:
        assert counter.chat({"messages": messages}) == reply.usage.prompt_tokens
    finally:
        counter.close()


@pytest.mark.slow
@needs_runtime
def test_gguf_server_stops_cleanly_on_ctrl_c(tmp_path):
    with running_server(_smollm2(), "--n-ctx", "256") as server:
        assert _get(f"{server.url}/health")[0] == 200
        code = server.stop()
    assert code == 0, server.output()
    assert "server stopped" in server.output() and "Traceback" not in server.output()


# ---- a run directory: every quant under its name, switched per request --------------------------



@pytest.mark.slow
def test_run_directory_server_switches_between_quants(tiny_gguf_run):
    with running_server(str(tiny_gguf_run), "--n-ctx", "256") as server:
        client = _client(server.url, None)
        assert [m.id for m in client.models.list().data] == ["Q8_0", "F16"]  # the Modelfile's quant first
        for model in ("Q8_0", "F16", "Q8_0"):
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                                   max_tokens=3, temperature=0)
            assert reply.model == model and reply.usage.completion_tokens <= 3
        _, info = _get(f"{server.url}/medtune/info")
        assert info["system_prompt"] == "Answer briefly." and info["title"] == "tiny"


@pytest.mark.slow
def test_gguf_backend_adds_the_runs_stop_strings(tiny_gguf_run):
    from medtune.serve.gguf import GGUFBackend, RequestRejected
    from medtune.serve.targets import resolve_serve_target

    plan = resolve_serve_target(tiny_gguf_run)
    backend = GGUFBackend(plan, n_ctx=256, n_threads=1, api_key=None)
    try:
        checked = backend.check("/v1/chat/completions", {"model": "F16", "messages": [{"role": "user", "content": "hi"}], "stop": "END"})
        assert checked["stop"] == ["END", "<|im_end|>", "<|im_start|>"]
        assert backend.check("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})["model"] == "Q8_0"
        with pytest.raises(RequestRejected) as caught:
            backend.check("/v1/completions", {"model": "F16", "prompt": "fever " * 300})
        assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"
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
