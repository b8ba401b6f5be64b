"""Run configs: every shipped config parses; problems name key, file and what is allowed, all at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from medtune.config import RunConfig, load_config, save_resolved_config
from medtune.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


MINIMAL = "name: t\ndata:\n  files: [builtin:reasonmed-sample]\n"


def test_there_are_shipped_configs():
    names = {path.name for path in CONFIGS}
    assert {"demo.yaml", "llama3.2-1b-reasonmed.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.name
    # Each starts with a comment showing the command that runs it.
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert any(f"medtune run configs/{path.name}" in line for line in header), path


def test_shipped_configs_keep_pad_and_length_fixes():
    demo = load_config(next(p for p in CONFIGS if p.name == "demo.yaml"))
    # The demo trains on its teaching set, is scored on held-out cases of the same facts, and checks
    # that none of those cases is in the training data.
    assert demo.data.files == ["builtin:reasonmed-facts"]
    assert [b.path for b in demo.eval.benchmarks if b.name == "medtune_sample"] == ["builtin:reasonmed-heldout"]
    assert demo.data.decontaminate.enabled and demo.data.decontaminate.benchmarks == ["medtune_sample"]
    gpu = load_config(next(p for p in CONFIGS if p.name == "llama3.2-1b-reasonmed.yaml"))
    assert gpu.data.dataset == "lingshu-medical-mllm/ReasonMed" and gpu.data.max_length > 512
    assert (gpu.lora.r, gpu.lora.alpha, gpu.lora.dropout) == (8, 16, 0.05)


def test_defaults_follow_the_seed_recipe(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 16, 0.05)
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (config.train.epochs, config.train.batch_size, config.train.gradient_accumulation_steps) == (3, 4, 4)
    assert config.train.learning_rate == 2e-4
    assert config.run_dir == Path("runs") / "t"


def test_unknown_key_names_key_file_and_allowed_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "  max_len: 512\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "data.max_len: unknown key" in message
    assert "max_length" in message and "val_size" in message  # the allowed keys are listed


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer: unknown key; allowed here: data, eval, export"):
        load_config(write(tmp_path, MINIMAL + "trainer:\n  epochs: 1\n"))


def test_wrong_type_and_impossible_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs: .*\(got 'three'\)"):
        load_config(write(tmp_path, MINIMAL + "train:\n  epochs: three\n"))
    with pytest.raises(ConfigError, match=r"lora\.dropout: .*less than 1"):
        load_config(write(tmp_path, MINIMAL + "lora:\n  dropout: 1.5\n"))
    with pytest.raises(ConfigError, match=r"data\.too_long: .*'drop' or 'truncate'"):
        load_config(write(tmp_path, MINIMAL + "  too_long: cut\n"))


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "name: bad name\ndata:\n  files: [a.jsonl]\n  max_length: 4\n  colour: red\nlora:\n  r: 0\ntrain:\n  learning_rate: x\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "5 problem(s)" in message
    for key in ("name:", "data.max_length:", "data.colour:", "lora.r:", "train.learning_rate:"):
        assert f"  - {key}" in message, key


def test_data_needs_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of data.dataset"):
        load_config(write(tmp_path, "name: t\ndata:\n  val_size: 0.1\n"))
    both = "name: t\ndata:\n  dataset: org/set\n  files: [a.jsonl]\n"
    with pytest.raises(ConfigError, match="exactly one of data.dataset"):
        load_config(write(tmp_path, both))


def test_missing_name_and_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="name: required"):
        load_config(write(tmp_path, "data:\n  files: [a.jsonl]\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_broken_yaml_names_the_file_line_and_column(tmp_path):
    path = write(tmp_path, "name: t\ndata:\n  files: x\n   format: auto\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:4:10: not valid YAML: mapping values are not allowed here")
    assert "<unicode string>" not in message
    assert message.splitlines()[1:] == ["  4 |    format: auto", "    |          ^"]  # the line, a caret under column 10
    # A problem found later than where it began names both places.
    unclosed = write(tmp_path, "name: t\ndata:\n  files: [a.jsonl\n  format: auto\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(unclosed))}:4:9: not valid YAML: expected ',' or '\]', but got ':' "
                       r"\(while parsing a flow sequence that starts at line 3, column 10\)"):
        load_config(unclosed)


def test_cli_prints_a_yaml_error_as_one_error_line_without_eating_brackets(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "name: t\ndata:\n  files: [a.jsonl\n  format: auto\n")
    done = subprocess.run([sys.executable, "-m", "medtune.cli", "prepare", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}:4:9: not valid YAML: expected ',' or ']', but got ':' "
                      "(while parsing a flow sequence that starts at line 3, column 10)"]


def test_set_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(
        path,
        [
            "train.learning_rate=1e-4",
            "data.max_length=4096",
            "data.files=[a.jsonl, b.parquet]",
            "lora.target_modules=all-linear",
            "data.decontaminate.enabled=true",
            "name=other",
        ],
    )
    assert config.train.learning_rate == 1e-4
    assert config.data.max_length == 4096 and config.data.files == ["a.jsonl", "b.parquet"]
    assert config.lora.target_modules == "all-linear" and config.data.decontaminate.enabled
    assert config.name == "other"


def test_bad_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.learning_rate"])
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_config(path, ["name.sub=1"])
    with pytest.raises(ConfigError, match=r"train\.batch_sise: unknown key"):
        load_config(path, ["train.batch_sise=8"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ["seed=7"])
    destination = tmp_path / "runs" / "t" / "config.yaml"
    save_resolved_config(config, destination)
    saved = yaml.safe_load(destination.read_text())
    assert saved["seed"] == 7 and saved["data"]["max_length"] == config.data.max_length
    assert load_config(destination) == config
