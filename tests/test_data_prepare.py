"""The data stage end to end on small files: every drop reason under skip and error, split,
reuse, outputs, and the `medtune prepare` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from medtune.config import SAMPLE_DATA, DataConfig, ModelConfig, RunConfig
from medtune.data.loading import builtin_path
from medtune.data.prepare import load_prepared, read_report
from medtune.data.validation import REASONS
from medtune.errors import DataError
from medtune.pipeline import run_or_skip
from medtune.rundir import RunDir

BROKEN = "builtin:broken-records"
# Line of the broken-records file -> the reason it must be dropped for (the other lines are good).
BROKEN_LINES = {
    1: "unknown_format",
    4: "invalid_json",
    5: "invalid_json",
    6: "invalid_utf8",
    7: "missing_field",
    8: "wrong_type",
    9: "wrong_type",
    10: "missing_field",
    11: "bad_role",
    12: "bad_order",
    13: "bad_order",
    14: "empty_prompt",
    15: "empty_reply",
    16: "special_token",
    17: "duplicate",
    18: "too_long",
    21: "mixed_format",  # a ReasonMed record in a file whose first record made it `messages`
}
GOOD_LINES = (2, 3, 19, 20)


@dataclass
class Prepared:
    report: dict
    reused: bool


def prepare_data(config: RunConfig, force: bool = False) -> Prepared:
    """The data stage as `medtune prepare` runs it: recorded in the manifest, skipped when current."""
    outcome = run_or_skip(config, "prepare", force=force)
    return Prepared(read_report(RunDir.of(config)), outcome.action == "skipped")


def make_config(tmp_path: Path, model_dir: Path, files: list[str], name: str = "t", seed: int = 42, **data) -> RunConfig:
    data.setdefault("val_size", 0.25)
    return RunConfig(
        name=name,
        output_dir=str(tmp_path / "runs"),
        seed=seed,
        data=DataConfig(files=files, **data),
        model=ModelConfig(base=str(model_dir)),
    )


def test_broken_records_are_each_counted_under_their_reason(tmp_path, tiny_llama_dir):
    result = prepare_data(make_config(tmp_path, tiny_llama_dir, [BROKEN], max_length=1024))
    report = result.report
    expected: dict[str, int] = {}
    for reason in BROKEN_LINES.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert report["dropped"] == expected
    # The file covers every reason but three, each tested where it arises: contamination
    # (test_data_decontaminate.py), a missing final answer under data.loss_on final_answer (test_data_loss_on.py)
    # and an RL prompt held out of SFT (test_rl_prompts_are_held_out_of_sft_and_counted, below).
    assert set(expected) == set(REASONS) - {"contaminated", "no_final_answer", "rl_prompt"}
    assert report["kept"] == len(GOOD_LINES) and report["records_read"] == 21
    assert report["records_read"] == report["kept"] + report["dropped_total"]
    path = builtin_path(BROKEN)
    for line, reason in BROKEN_LINES.items():
        assert any(example.startswith(f"{path}:{line}: ") for example in report["examples"][reason]), (line, reason)
    assert "same chat as" in report["examples"]["duplicate"][0] and report["examples"]["duplicate"][0].endswith(":2")
    assert report["formats"] == {str(path): "messages"}


@pytest.mark.parametrize("line", sorted(set(BROKEN_LINES) - {1, 17, 18}))
def test_error_policy_stops_at_the_bad_record_with_file_line_and_field(tmp_path, tiny_llama_dir, line):
    lines = builtin_path(BROKEN).read_bytes().splitlines(keepends=True)
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(lines[1] + lines[line - 1] + lines[2])  # good, bad, good
    config = make_config(tmp_path, tiny_llama_dir, [str(path)], invalid="error")
    with pytest.raises(DataError) as caught:
        prepare_data(config)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: {REASONS[BROKEN_LINES[line]]}")
    assert "data.invalid=skip" in message
    if BROKEN_LINES[line] in ("missing_field", "wrong_type", "bad_role", "empty_reply", "empty_prompt"):
        assert "field 'messages" in message
    assert not RunDir.of(config).data.exists()  # nothing half-written


def test_error_policy_unknown_format_and_duplicate(tmp_path, tiny_llama_dir):
    lines = builtin_path(BROKEN).read_bytes().splitlines(keepends=True)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_bytes(lines[0])
    with pytest.raises(DataError, match=rf"{unknown}:1: keys match no known record format.*data.format"):
        prepare_data(make_config(tmp_path, tiny_llama_dir, [str(unknown)], invalid="error"))
    dup = tmp_path / "dup.jsonl"
    dup.write_bytes(lines[1] + lines[2] + lines[1])
    with pytest.raises(DataError, match=rf"{dup}:3: exact duplicate.*same chat as {dup}:1"):
        prepare_data(make_config(tmp_path, tiny_llama_dir, [str(dup)], invalid="error"))
    # Duplicates can be kept on purpose.
    kept = prepare_data(make_config(tmp_path, tiny_llama_dir, [str(dup)], invalid="error", deduplicate=False))
    assert kept.report["kept"] == 3


def test_sample_outputs_columns_labels_and_messages(tmp_path, tiny_llama_dir, smollm2_tokenizer):
    config = make_config(tmp_path, tiny_llama_dir, [SAMPLE_DATA], format="reasonmed", val_size=0.15)
    result = prepare_data(config)
    splits = load_prepared(RunDir.of(config))
    assert set(splits) == {"train", "val"}
    assert len(splits["val"]) == round(68 * 0.15) and len(splits["train"]) + len(splits["val"]) == 68
    assert splits["train"].column_names == ["input_ids", "labels", "length", "messages"]
    eot = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in splits["train"].select(range(5)):
        assert row["length"] == len(row["input_ids"]) == len(row["labels"])
        labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert labelled[-1] == eot
        text = smollm2_tokenizer.decode(labelled)
        messages = json.loads(row["messages"])
        assert text == messages[-1]["content"] + "<|im_end|>"
        assert text.rstrip("<|im_end|>").splitlines()[-1].startswith("The answer is ")
    report = result.report
    assert report["token_lengths"]["max"] <= 1024 and report["truncated"] == 0
    assert report["label_tokens"] == sum(
        sum(label != -100 for label in row) for split in splits.values() for row in split["labels"]
    )
    assert set(report["token_lengths"]) == {"p50", "p90", "p99", "max", "mean", "total"}
    manifest = RunDir.of(config).manifest()
    assert manifest["stages"]["prepare"]["status"] == "done"
    assert any(o["path"] == "data/report.json" for o in manifest["stages"]["prepare"]["outputs"])


def test_too_long_drop_and_truncate_are_reported_separately(tmp_path, tiny_llama_dir):
    dropped = prepare_data(make_config(tmp_path, tiny_llama_dir, [SAMPLE_DATA], name="drop", max_length=240))
    cut = prepare_data(
        make_config(tmp_path, tiny_llama_dir, [SAMPLE_DATA], name="cut", max_length=240, too_long="truncate")
    )
    too_long = dropped.report["dropped"]["too_long"]
    assert 0 < too_long < 68 and dropped.report["kept"] == 68 - too_long and dropped.report["truncated"] == 0
    assert cut.report["dropped"] == {} and cut.report["truncated"] == too_long
    assert cut.report["truncated_fraction"] == pytest.approx(too_long / 68, abs=1e-5)
    assert cut.report["token_lengths"]["max"] == 240
    assert dropped.report["token_lengths_before_limit"] == cut.report["token_lengths_before_limit"]


def test_split_is_deterministic_and_follows_the_seed(tmp_path, tiny_llama_dir):
    def val_questions(name, seed):
        config = make_config(tmp_path, tiny_llama_dir, [SAMPLE_DATA], name=name, seed=seed, val_size=10)
        prepare_data(config)
        return sorted(load_prepared(RunDir.of(config))["val"]["messages"])

    first = val_questions("a", 1)
    assert len(first) == 10
    assert val_questions("b", 1) == first
    assert val_questions("c", 2) != first


def test_val_size_zero_keeps_every_record_for_training_and_no_val_split(tmp_path, tiny_llama_dir):
    from medtune.train.trainer import load_prepared_splits

    config = make_config(tmp_path, tiny_llama_dir, [SAMPLE_DATA], name="noval", val_size=0)
    report = prepare_data(config).report
    train, val = load_prepared_splits(RunDir.of(config))
    assert report["val"] == 0 and val is None and len(train) == report["train"] == report["kept"]
    assert not RunDir.of(config).split("val").exists()


def test_unchanged_inputs_are_reused_and_changes_rebuild(tmp_path, tiny_llama_dir):
    data = tmp_path / "d.jsonl"
    lines = builtin_path(SAMPLE_DATA).read_text().splitlines()[:20]
    data.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, tiny_llama_dir, [str(data)])
    first = prepare_data(config)
    assert not first.reused
    assert prepare_data(config).reused
    assert not prepare_data(make_config(tmp_path, tiny_llama_dir, [str(data)], max_length=512)).reused
    data.write_text("\n".join(lines[:19]) + "\n")  # same path, new content
    again = prepare_data(make_config(tmp_path, tiny_llama_dir, [str(data)], max_length=512))
    assert not again.reused and again.report["records_read"] == 19
    assert prepare_data(make_config(tmp_path, tiny_llama_dir, [str(data)], max_length=512), force=True).reused is False


def test_nothing_usable_and_empty_sources(tmp_path, tiny_llama_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        prepare_data(make_config(tmp_path, tiny_llama_dir, [str(empty)]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(DataError, match="no usable records.*invalid_json"):
        prepare_data(make_config(tmp_path, tiny_llama_dir, [str(bad)]))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "medtune.cli", "prepare", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_reports_reasons_under_skip_and_one_red_line_under_error(tmp_path, tiny_llama_dir):
    config = tmp_path / "broken.yaml"
    config.write_text(
        f"name: broken\noutput_dir: {tmp_path / 'runs'}\n"
        f"data:\n  files: [{BROKEN}]\n  max_length: 1024\nmodel:\n  base: {tiny_llama_dir}\n"
    )
    skip = _cli(str(config), cwd=tmp_path)
    assert skip.returncode == 0, skip.stderr
    for reason in set(BROKEN_LINES.values()):
        assert f"dropped: {reason}" in skip.stdout
    assert f"{builtin_path(BROKEN)}:16:" in skip.stdout
    assert RunDir(tmp_path / "runs" / "broken").config_file.is_file()

    stop = _cli(str(config), "--set", "data.invalid=error", "--set", "name=broken-error", cwd=tmp_path)
    assert stop.returncode == 2
    assert "Traceback" not in stop.stderr
    lines = [line for line in stop.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{builtin_path(BROKEN)}:1: keys match no known record format" in lines[0]



@pytest.mark.slow
def test_demo_config_with_the_embedded_model(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    result = _cli(str(repo / "configs" / "demo.yaml"), "--set", f"output_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = read_report(RunDir(tmp_path / "demo"))
    assert report["kept"] == report["records_read"] >= 60
    assert report["chat_template_eot"] == "<|im_end|>" and report["pad_token"] != "<|im_end|>"


def test_hub_code_path_with_a_packaged_builder(tmp_path, tiny_llama_dir):
    # data.dataset goes through datasets.load_dataset; its "json" builder runs offline on local files.
    config = RunConfig(
        name="hub",
        output_dir=str(tmp_path / "runs"),
        data=DataConfig(dataset="json", data_files=[str(builtin_path(SAMPLE_DATA))], split="train", val_size=5),
        model=ModelConfig(base=str(tiny_llama_dir)),
    )
    report = prepare_data(config).report
    assert report["kept"] == 68 and report["val"] == 5
    assert report["examples"] == {} and report["sources"][0]["dataset"] == "json"
    assert report["sources"][0]["fingerprint"]
    assert prepare_data(config).reused


def test_a_wrong_data_format_names_the_format_the_records_look_like(tmp_path, tiny_llama_dir):
    conversations = tmp_path / "chats.jsonl"
    conversations.write_text("".join(
        json.dumps({"conversations": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n"
        for i in range(4)
    ))
    config = make_config(tmp_path, tiny_llama_dir, [str(conversations)], format="reasonmed")
    with pytest.raises(DataError) as caught:
        prepare_data(config)
    message = str(caught.value)
    assert "every record was dropped as missing_field" in message
    assert "look like the 'conversations' format" in message and "set data.format: conversations" in message
    assert f"{conversations}:1: field 'instruction'" in message


def test_a_problem_in_a_reasonmed_record_names_the_records_own_field(tmp_path, tiny_llama_dir):
    records = tmp_path / "reasonmed.jsonl"
    good = {"instruction": "Which vitamin prevents scurvy?", "input": "A. C B. D", "output": "Vitamin C. The answer is A."}
    records.write_text(json.dumps(good) + "\n" + json.dumps({**good, "output": "   "}) + "\n")
    config = make_config(tmp_path, tiny_llama_dir, [str(records)], format="reasonmed", invalid="error",
                         system_prompt="You are a careful physician.")
    with pytest.raises(DataError, match=r"reasonmed.jsonl:2: .*field 'output': assistant message is empty"):
        prepare_data(config)


def test_rl_prompts_are_held_out_of_sft_and_counted(tmp_path, tiny_llama_dir):
    """rl.hold_out_of_sft: every record whose user turn is one of RL's prompts (training and held-out) is dropped
    from SFT's data and counted as rl_prompt; every other record is kept. One pool, disjoint parts."""
    from medtune.data.prepare import chat_messages
    from medtune.rl.prompts import prompt_key, run_prompts

    config = RunConfig.model_validate({
        "name": "held", "output_dir": str(tmp_path / "runs"), "seed": 42, "model": {"base": str(tiny_llama_dir)},
        "data": {"files": ["builtin:reasonmed-sample"], "val_size": 0.25},
        "rl": {"val_size": 2, "limit": 3, "hold_out_of_sft": True},
    })
    train, val, _ = run_prompts(config)
    held = {prompt_key(p.user) for p in (*train, *val)}
    assert len(train) == 3 and len(val) == 2 and len(held) == 5

    report = prepare_data(config).report
    assert report["dropped"]["rl_prompt"] == 5 and report["rl_held_out"] == {"prompts": 5, "dropped": 5}
    assert report["reasons"]["rl_prompt"] == REASONS["rl_prompt"]
    assert report["records_read"] == 68 == report["kept"] + report["dropped_total"]
    splits = load_prepared(RunDir.of(config))
    users = [prompt_key(m["content"]) for split in splits.values() for cell in split["messages"]
             for m in chat_messages(cell) if m["role"] == "user"]
    assert len(users) == report["kept"] and not held & set(users)

    shared = prepare_data(config.model_copy(update={"name": "shared", "rl": config.rl.model_copy(update={"hold_out_of_sft": False})})).report
    assert "rl_prompt" not in shared["dropped"] and shared["kept"] == report["kept"] + 5
