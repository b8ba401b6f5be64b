"""The pinned llama.cpp: type names, locating the converter, and the runtime regression test
(convert -> quantize -> load -> logits agree with transformers; crashes or divergence fail it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune import llamacpp
from medtune.errors import ConfigError, ToolError

needs_runtime = pytest.mark.skipif(
    not llamacpp.runtime_available(),
    reason=f"llama.cpp runtime not installed: {llamacpp.SETUP_HINT} (CI does)",
)
needs_converter = pytest.mark.skipif(
    not (llamacpp.converter_dir() / llamacpp.CONVERTER).is_file(),
    reason=f"llama.cpp converter not installed: {llamacpp.SETUP_HINT} (CI does)",
)


def test_quant_type_names_come_from_llama_cpp():
    names = llamacpp.quant_type_names()
    assert names["Q4_K_M"] == 15 and names["Q8_0"] == 7 and names["F16"] == 1
    allowed = llamacpp.allowed_quant_types()
    assert "Q5_K_M" in allowed and "Q4_K" in allowed
    assert "IQ2_XS" not in allowed  # needs an importance matrix
    assert "IQ2_XS" in llamacpp.allowed_quant_types(imatrix=True) and "F16" not in llamacpp.allowed_quant_types(imatrix=True)
    assert llamacpp.normalize_quant_types(["iq2_xs", "IQ4_XS"], imatrix=True) == ["IQ2_XS", "IQ4_XS"]


def test_normalize_quant_types_accepts_aliases_and_case():
    assert llamacpp.normalize_quant_types(["q4_k", "Q8_0", "Q4_K_M"]) == ["Q4_K_M", "Q8_0"]


def test_unknown_quant_types_are_a_config_error_listing_the_allowed_ones():
    with pytest.raises(ConfigError) as info:
        llamacpp.normalize_quant_types(["Q4_K_X", "IQ1_S", "F16"], outtype="f16")
    message = str(info.value)
    assert "'Q4_K_X' is not a llama.cpp quantization type" in message
    assert "importance matrix" in message and "16-bit file" in message
    assert "Allowed:" in message and "Q4_K_M" in message


def test_config_file_with_unknown_quant_type_names_the_key(tmp_path):
    from medtune.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("name: x\ndata: {files: [a.jsonl]}\nexport: {quant_types: [Q4_K_M, Q9_9]}\n")
    with pytest.raises(ConfigError, match=r"export\.quant_types: .*'Q9_9'.*Allowed"):
        load_config(path)
    assert load_config(path, ["export.quant_types=[q5_k_m]"]).export.quant_types == ["Q5_K_M"]


def test_converter_from_llama_cpp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(ToolError, match="LLAMA_CPP_DIR"):
        llamacpp.find_converter()
    (tmp_path / llamacpp.CONVERTER).write_text("# stub\n")
    (tmp_path / "gguf-py" / "gguf").mkdir(parents=True)
    assert llamacpp.find_converter() == tmp_path / llamacpp.CONVERTER
    assert "LLAMA_CPP_DIR" in llamacpp.converter_description()


def test_descriptions_are_one_line():
    for text in (llamacpp.runtime_description(), llamacpp.converter_description(), llamacpp.tools_description()):
        assert text and "\n" not in text


def test_tools_from_llama_cpp_tools_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_TOOLS_DIR", str(tmp_path))
    with pytest.raises(ToolError, match="LLAMA_CPP_TOOLS_DIR=.* has no executable llama-perplexity"):
        llamacpp.find_tool("llama-perplexity")
    assert not llamacpp.tools_available()
    script = tmp_path / "llama-perplexity"
    script.write_text("#!/bin/sh\necho 'main: error: failed to open file'\nexit 3\n")
    script.chmod(0o755)
    assert llamacpp.find_tool("llama-perplexity") == script
    with pytest.raises(ToolError, match=r"llama-perplexity failed \(exit 3\):\nmain: error: failed to open file"):
        llamacpp.run_tool("llama-perplexity", ["-m", "x.gguf"])


def test_a_perplexity_report_without_its_figures_is_an_error():
    with pytest.raises(ToolError, match="no line matching"):
        llamacpp.parse_perplexity_output("llama_model_load: error loading model\n", with_kl=True, ctx=512, model="m.gguf")


@pytest.mark.skipif(not llamacpp.tools_available(), reason=f"llama.cpp tools not built: {llamacpp.SETUP_HINT} (CI does)")
def test_the_pinned_tools_run():
    for tool in llamacpp.TOOLS:
        assert llamacpp.find_tool(tool).parent == llamacpp.tools_dir()
    import subprocess

    # llama-quantize prints its usage (and exits 1) for --help: the build is the one with imatrix support.
    shown = subprocess.run([str(llamacpp.find_tool("llama-quantize")), "--help"], capture_output=True, text=True, timeout=30)
    assert "--imatrix" in shown.stdout + shown.stderr


@needs_runtime
def test_runtime_is_the_pinned_build_without_amx():
    runtime = llamacpp.load_runtime()
    assert runtime.__version__ == llamacpp.LLAMA_CPP_PYTHON_VERSION
    assert "AMX_INT8 = 1" not in runtime.llama_print_system_info().decode()
    assert "no AMX" in llamacpp.runtime_description() or "outside" in llamacpp.runtime_description()


@needs_runtime
def test_quantize_refuses_imatrix_types_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="importance matrix"):
        llamacpp.quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "IQ2_XS")
    with pytest.raises(ToolError, match="does not exist"):
        llamacpp.quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q8_0")
    (tmp_path / "a.gguf").write_bytes(b"x")
    with pytest.raises(ToolError, match="importance matrix .*missing.imatrix: the file does not exist"):
        llamacpp.quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "IQ2_XS", imatrix=tmp_path / "missing.imatrix")


def _hf_logits(model_dir: Path, ids: list[int]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def _chat_ids(model_dir: Path) -> tuple[str, list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are a careful physician."},
         {"role": "user", "content": "A patient presents with severe headache and neck stiffness. What is the most likely diagnosis?"}],
        tokenize=False, add_generation_prompt=True,
    )
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


def _roundtrip(model_dir: Path, tmp_path: Path) -> None:
    """Convert, quantize and load; the llama.cpp logits must match transformers'."""
    text, ids = _chat_ids(model_dir)
    reference = _hf_logits(model_dir, ids)
    f16 = llamacpp.convert_to_gguf(model_dir, tmp_path / "m-F16.gguf", "f16", {"general.name": "regression"})
    q8 = llamacpp.quantize_gguf(f16, tmp_path / "m-Q8_0.gguf", "Q8_0")
    for path, max_diff, min_top1 in ((f16, 5e-3, 0.97), (q8, 0.1, 0.9)):
        llm = llamacpp.open_gguf(path, n_ctx=256, logits_all=True)
        try:
            # Same tokens through llama.cpp's own tokenizer: the converted vocabulary is faithful.
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            logits = llamacpp.sequence_logits(llm, ids)
        finally:
            llm.close()
        assert logits.shape == reference.shape
        assert abs(logits - reference).max() < max_diff, path.name
        assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= min_top1, path.name


@needs_runtime
@needs_converter
def test_llama_cpp_matches_transformers(tmp_path, tiny_llama_dir):
    """Regression test for the AMX miscompile class of bugs: llama.cpp inference must not crash
    and its F16 logits must equal transformers' fp32 logits up to F16 rounding."""
    _roundtrip(tiny_llama_dir, tmp_path)


@pytest.mark.slow
@needs_runtime
@needs_converter
def test_llama_cpp_matches_transformers_llama3_rope(tmp_path, tiny_llama3_rope_dir):
    _roundtrip(tiny_llama3_rope_dir, tmp_path)


# ---- child tools die with medtune (issue 24 item 10) ---------------------------------------------


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting to be reaped has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait_for(predicate, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _pid_from(path: Path) -> int:
    assert _wait_for(lambda: path.is_file() and path.read_text().strip().isdigit(), 30), f"no pid written to {path}"
    return int(path.read_text())


def _sleeper(pid_file: Path, *, grandchild_pid_file: Path | None = None) -> list[str]:
    """A stand-in for a llama.cpp tool: a Python process that writes its pid (and, given
    grandchild_pid_file, first starts a grandchild that does the same), then sleeps."""
    import sys

    code = "import os, subprocess, sys, time\n"
    if grandchild_pid_file is not None:
        code += f"subprocess.Popen({_sleeper(grandchild_pid_file)!r})\n"
    code += f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    return [sys.executable, "-c", code]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux (/proc, PR_SET_PDEATHSIG)")
def test_a_tool_dies_when_medtune_is_killed(tmp_path):
    """kill -9 of the process running a llama.cpp tool (here a sleeping stand-in) leaves no tool behind."""
    import subprocess
    import sys

    child_pid = tmp_path / "child.pid"
    parent_code = (f"from medtune.llamacpp import run_child\n"
                   f"run_child({_sleeper(child_pid)!r})\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        child = _pid_from(child_pid)
        assert _alive(child)
        parent.kill()  # SIGKILL: no Python handler runs in the parent
        parent.wait()
        assert _wait_for(lambda: not _alive(child), 5), f"tool {child} outlived its killed parent"
    finally:
        parent.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux (/proc)")
def test_an_interrupted_tool_is_killed_with_everything_it_started(tmp_path):
    """An exception while a tool runs (a timeout here; Ctrl-C takes the same path) kills the tool's
    whole process group, grandchildren included, before it goes on."""
    import subprocess

    child_pid, grandchild_pid = tmp_path / "child.pid", tmp_path / "grandchild.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        llamacpp.run_child(_sleeper(child_pid, grandchild_pid_file=grandchild_pid), timeout=3)
    child, grandchild = _pid_from(child_pid), _pid_from(grandchild_pid)
    assert _wait_for(lambda: not _alive(child) and not _alive(grandchild), 5)


def test_run_child_returns_output_and_exit_status(tmp_path):
    import sys

    done = llamacpp.run_child([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                              cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


@pytest.mark.slow
@needs_runtime
@needs_converter
@pytest.mark.skipif(not llamacpp.tools_available() or not Path("/proc/self/stat").is_file(),
                    reason=f"needs Linux and llama.cpp's tools: {llamacpp.SETUP_HINT} (CI does)")
def test_kill_9_during_llama_imatrix_leaves_no_tool_writing(tmp_path, tiny_llama_dir):
    """The issue-24 case on the real tool: medtune (here a process running compute_imatrix, as export
    does) is killed with SIGKILL while llama-imatrix works; the tool dies with it instead of running
    on and writing its temporary file. (llama-imatrix reports progress often, so it would also die
    of SIGPIPE at its next write; a tool that stays quiet for seconds, like the converter writing
    tensors, is what test_a_tool_dies_when_medtune_is_killed stands in for.)"""
    import subprocess
    import sys

    f16 = llamacpp.convert_to_gguf(tiny_llama_dir, tmp_path / "m-F16.gguf", "f16")
    text = tmp_path / "calibration.txt"
    text.write_text("The kidney filters the blood and regulates electrolytes. " * 200_000)  # minutes of work
    code = (f"from medtune import llamacpp\n"
            f"llamacpp.compute_imatrix({str(f16)!r}, {str(text)!r}, {str(tmp_path / 'm.imatrix')!r}, ctx=128, "
            f"chunks=100000, n_threads=1)\n")
    parent = subprocess.Popen([sys.executable, "-c", code])
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    try:
        assert _wait_for(lambda: children.is_file() and children.read_text().split(), 60), "llama-imatrix never started"
        tool = int(children.read_text().split()[0])
        assert Path(f"/proc/{tool}/comm").read_text().strip() == "llama-imatrix" and _alive(tool)
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not _alive(tool), 5), f"llama-imatrix ({tool}) outlived the killed medtune process"
    finally:
        parent.kill()
