"""medtune chat: target detection (rundir.open_artifact), one-shot answers from a merged folder, an adapter and a GGUF file."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from medtune import llamacpp
from medtune.errors import ArtifactError


def _invoke(*args: str):
    from medtune.cli import app

    return CliRunner().invoke(app, ["chat", *args])


def test_chat_target_goes_through_open_artifact(tmp_path, tiny_llama_dir):
    from medtune.chat import chat_target

    assert chat_target(tiny_llama_dir) == ("merged", tiny_llama_dir)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert chat_target(adapter) == ("adapter", adapter)
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "m-Q8_0.gguf").write_bytes(b"GGUF")
    assert chat_target(tmp_path / "gguf" / "m-Q8_0.gguf") == ("gguf", tmp_path / "gguf" / "m-Q8_0.gguf")
    (tmp_path / "gguf" / "m-F16.gguf").write_bytes(b"GGUF")
    with pytest.raises(ArtifactError, match="pick one: m-F16.gguf, m-Q8_0.gguf"):
        chat_target(tmp_path / "gguf")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ArtifactError, match="not a .gguf file, a run directory, a merged model folder"):
        chat_target(tmp_path / "folder")


def test_chat_target_run_directory_names_its_models(tmp_path):
    from medtune.chat import chat_target

    run = tmp_path / "demo"
    (run / "gguf").mkdir(parents=True)
    (run / "gguf" / "demo-Q4_K_M.gguf").write_bytes(b"GGUF")
    (run / "merged").mkdir()
    (run / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"is a run directory; chat with one of its models: .*demo-Q4_K_M.gguf, .*merged"):
        chat_target(run)


def test_missing_and_fake_gguf_files_say_what_is_wrong(tmp_path):
    from medtune.chat import chat_target

    with pytest.raises(ArtifactError, match=r"missing\.gguf does not exist; a run's GGUF files are in runs/<name>/gguf/"):
        chat_target(tmp_path / "missing.gguf")
    with pytest.raises(ArtifactError, match=r"missing does not exist; give a run directory"):
        chat_target(tmp_path / "missing")
    fake = tmp_path / "page.gguf"
    fake.write_bytes(b"<!DOCTYPE html><html>404</html>")
    with pytest.raises(ArtifactError, match=r"page\.gguf is not a GGUF file: it starts with b'<!DO', not the GGUF magic bytes b'GGUF'"):
        chat_target(fake)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"empty\.gguf is not a GGUF file: it starts with b'', .*\(0 bytes"):
        chat_target(empty)


def test_chat_one_shot_with_merged_folder(tiny_llama_dir):
    result = _invoke(str(tiny_llama_dir), "--prompt", "What causes scurvy?", "--temperature", "0", "--max-tokens", "6")
    assert result.exit_code == 0, result.output
    assert "6 tokens, cut at --max-tokens 6" in result.output


def test_chat_with_adapter_uses_base_plus_adapter(tmp_path, tiny_llama_dir):
    from test_merge import make_adapter_run

    config = make_adapter_run(tmp_path, tiny_llama_dir)
    result = _invoke(str(config.run_dir / "adapter"), "-p", "hi", "--system", "Be brief.", "--max-tokens", "4")
    assert result.exit_code == 0, result.output
    assert "4 tokens" in result.output


def test_chat_interactive_reads_until_eof(tiny_llama_dir):
    from medtune.cli import app

    result = CliRunner().invoke(app, ["chat", str(tiny_llama_dir), "--max-tokens", "3"], input="hello\n/reset\nagain\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("3 tokens") == 2


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp.runtime_available(), reason=f"llama.cpp runtime not installed: {llamacpp.SETUP_HINT}")
@pytest.mark.skipif(
    not (llamacpp.converter_dir() / llamacpp.CONVERTER).is_file(), reason=f"converter not installed: {llamacpp.SETUP_HINT}"
)
def test_chat_with_gguf_file(tmp_path, tiny_llama_dir):
    path = llamacpp.convert_to_gguf(tiny_llama_dir, tmp_path / "tiny-F16.gguf", "f16", {"general.name": "tiny"})
    result = _invoke(str(path), "-p", "hello", "--temperature", "0", "--max-tokens", "5")
    assert result.exit_code == 0, result.output
    assert "5 tokens, cut at --max-tokens 5" in result.output


def test_chat_bad_target_is_one_clear_error(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from medtune.cli import main; main()", "chat", str(tmp_path / "nope.gguf"), "-p", "x"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope.gguf does not exist" in errors[0] and "not a .gguf file" not in errors[0]
