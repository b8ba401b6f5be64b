"""`medtune push`: the plan and the cards (--dry-run, no network), and the upload itself against a local
stand-in for the Hub's HTTP API (tests/hub_fixture.py, HF_ENDPOINT pointed at 127.0.0.1).

The run folders are built here: tiny files in each stage folder and a manifest written with the same
functions and entry shape as pipeline.run_stage (describe_outputs, fingerprint, record_stage)."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from hub_fixture import FakeHub, RunningHub
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from medtune.artifacts import (
    atomic_write_json,
    describe_outputs,
    fingerprint,
    read_manifest,
    record_stage,
)
from medtune.commands import push as push_command
from medtune.errors import ArtifactError, ConfigError
from medtune.publish.upload import PublishError, check_can_write
from medtune.rundir import GGUF_MAGIC, RunDir
from medtune.tasks import get_benchmark

LLAMA = "meta-llama/Llama-3.2-1B-Instruct"


def _config(name: str, base: str, license: str | None, data: dict) -> dict:
    return {
        "name": name, "output_dir": "runs", "seed": 42, "data": {"format": "reasonmed", "max_length": 512, **data},
        "model": {"base": base, "license": license},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"epochs": 6, "learning_rate": 0.002},
        "export": {"outtype": "f16", "quant_types": ["Q4_K_M", "Q8_0"]},
    }


def _row(artifact: str, benchmark: str, mode: str, accuracy: float, n: int, ci: tuple[float, float]) -> dict:
    return {"artifact": artifact, "backend": "test", "benchmark": benchmark, "mode": mode, "n": n,
            "correct": round(accuracy * n), "accuracy": accuracy, "ci95": list(ci), "limit": None}


def _record(run: RunDir, stage: str, status: str = "done") -> None:
    """The manifest entry pipeline.run_stage writes for a finished stage."""
    outputs = describe_outputs([run.stage_folder(stage)], run.root)
    entry = {"status": status, "fingerprint": fingerprint({"stage": stage})}
    if status == "done":
        entry.update({"outputs": outputs, "outputs_digest": fingerprint(outputs), "seconds": 0.1})
    record_stage(run.root, stage, entry)


def build_run(root: Path, *, name: str, base: str, license: str | None, data: dict, benchmarks: list[tuple[str, str]],
              export_status: str = "done", adapter_gguf: bool = False, label_by_type: bool = False) -> RunDir:
    """A finished run: adapter/, merged/, gguf/ (F16 + two quants, Modelfile, imatrix; with adapter_gguf the
    LoRA adapter as GGUF beside its base in gguf/adapter/) and eval/ results."""
    run = RunDir(root / name)
    run.root.mkdir(parents=True)
    run.config_file.write_text(yaml.safe_dump(_config(name, base, license, data)), encoding="utf-8")
    files = {
        run.adapter / "adapter_config.json": b'{"peft_type": "LORA", "r": 16}',
        run.adapter / "adapter_model.safetensors": b"adapter weights " * 64,
        run.adapter / "tokenizer.json": b'{"model": {}}',
        run.train_log: b'{"step": 1, "loss": 2.0}\n',
        run.merged / "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        run.merged / "model.safetensors": b"merged weights " * 256,
        run.merged / "tokenizer.json": b'{"model": {}}',
        run.merged / "generation_config.json": b'{"eos_token_id": [2]}',
        run.gguf_file("F16"): GGUF_MAGIC + b"f16 " * 128,
        run.gguf_file("Q4_K_M"): GGUF_MAGIC + b"q4 " * 64,
        run.gguf_file("Q8_0"): GGUF_MAGIC + b"q8 " * 96,
        run.modelfile: f"FROM ./{name}-Q4_K_M.gguf\nPARAMETER stop <|im_end|>\n".encode(),
        run.imatrix: GGUF_MAGIC + b"imatrix " * 16,
    }
    if adapter_gguf:
        files[run.adapter_gguf_file("F16")] = GGUF_MAGIC + b"lora " * 32
        files[run.adapter_gguf_folder / f"{name}-base-F16.gguf"] = GGUF_MAGIC + b"base " * 64
        files[run.adapter_gguf_folder / "Modelfile"] = f"FROM ./{name}-base-F16.gguf\nADAPTER ./{name}-lora-F16.gguf\n".encode()
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for stage in ("prepare", "train", "merge"):
        run.stage_folder(stage).mkdir(exist_ok=True)
        (run.data / "report.json").write_text("{}") if stage == "prepare" else None
        _record(run, stage)
    _record(run, "export", export_status)
    rows = []
    # eval labels a GGUF file gguf:<TYPE> (runs before issue 23: gguf:<file stem>); the cards read both.
    label = {t: f"gguf:{t}" if label_by_type else f"gguf:{name}-{t}" for t in ("Q4_K_M", "Q8_0")}
    for benchmark, mode in benchmarks:
        rows += [_row("base", benchmark, mode, 0.40, 64, (0.28, 0.52)), _row("merged", benchmark, mode, 0.70, 64, (0.58, 0.81)),
                 _row(label["Q4_K_M"], benchmark, mode, 0.66, 64, (0.55, 0.77)),
                 _row(label["Q8_0"], benchmark, mode, 0.69, 64, (0.58, 0.80))]
    atomic_write_json(run.eval_results, {"run": name, "modes": sorted({m for _, m in benchmarks}), "results": rows, "comparisons": []})
    _record(run, "eval")
    return run


@pytest.fixture
def demo_run(tmp_path: Path) -> RunDir:
    return build_run(tmp_path / "runs", name="demo", base="embedded:smollm2-135m-instruct", license="apache-2.0",
                     data={"files": ["builtin:reasonmed-facts"]}, benchmarks=[("medtune_sample", "cot")])


@pytest.fixture
def llama_run(tmp_path: Path) -> RunDir:
    return build_run(tmp_path / "runs", name="llama3.2-1b-reasonmed", base=LLAMA, license="llama3.2",
                     data={"dataset": "lingshu-medical-mllm/ReasonMed", "data_files": ["ReasonMed.json"]},
                     benchmarks=[("pubmedqa", "loglik"), ("pubmedqa", "cot"), ("medqa", "loglik")], adapter_gguf=True,
                     label_by_type=True)


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(push_command.command)
    return app


def dry_run(run: RunDir, repo: str, *extra: str):
    result = CliRunner().invoke(_app(), [str(run.root), "--repo", repo, "--dry-run", *extra])
    return result


def _card(run: RunDir, repo_name: str) -> ModelCard:
    return ModelCard.load(run.publish / repo_name / "README.md")


def _staged(run: RunDir, repo_name: str) -> dict[str, str]:
    folder = run.publish / repo_name
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _recorded(run: RunDir, stage: str) -> dict[str, str]:
    folder = run.relative(run.stage_folder(stage)) + "/"
    return {r["path"].removeprefix(folder): r["sha256"] for r in read_manifest(run.root)["stages"][stage]["outputs"]}


def test_dry_run_demo_stages_exactly_the_verified_files_and_cards(demo_run: RunDir) -> None:
    result = dry_run(demo_run, "alice/demo-med")
    assert result.exit_code == 0, result.output
    for repo in ("alice/demo-med", "alice/demo-med-LoRA", "alice/demo-med-GGUF"):
        assert repo in result.output
    assert "demo-Q4_K_M.gguf" in result.output and "nothing uploaded" in result.output
    assert "3,840" in result.output  # the plan shows sizes: model.safetensors is 3,840 bytes
    for repo_name, stage in (("demo-med", "merge"), ("demo-med-LoRA", "train"), ("demo-med-GGUF", "export")):
        staged = _staged(demo_run, repo_name)
        assert staged.pop("README.md")
        assert staged == _recorded(demo_run, stage)  # the manifest's files, byte for byte, nothing else
    assert {"demo-F16.gguf", "demo-Q4_K_M.gguf", "demo-Q8_0.gguf", "Modelfile", "demo.imatrix"} == set(_recorded(demo_run, "export"))

    merged = _card(demo_run, "demo-med").data
    assert merged.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded GGUF's hub original
    assert merged.base_model_relation == "finetune"
    assert merged.license == "apache-2.0"
    assert merged.language == ["en"]
    assert merged.library_name == "transformers"
    assert merged.pipeline_tag == "text-generation"
    assert {"medical", "medtune", "lora"} <= set(merged.tags)
    assert merged.datasets is None  # medtune's own sample set has no hub id; the text names it
    (result_,) = merged.eval_results
    assert (result_.dataset_name, result_.metric_type, result_.metric_value) == (get_benchmark("medtune_sample").title, "accuracy", 70.0)
    assert result_.dataset_split is None  # shipped local files, not a hub split
    assert result_.metric_config == "cot"
    assert "n=64" in result_.metric_name and "95% CI 58.0-81.0" in result_.metric_name
    assert result_.metric_args == {"n": 64, "ci95_low": 58.0, "ci95_high": 81.0}

    lora = _card(demo_run, "demo-med-LoRA").data
    assert (lora.base_model, lora.base_model_relation, lora.library_name) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "adapter", "peft")
    assert {"lora", "peft", "medical"} <= set(lora.tags)
    assert lora.eval_results is None  # the adapter itself was not scored (eval.artifacts)

    gguf = _card(demo_run, "demo-med-GGUF")
    assert (gguf.data.base_model, gguf.data.base_model_relation, gguf.data.library_name) == ("alice/demo-med", "quantized", "gguf")
    assert {"gguf", "medical"} <= set(gguf.data.tags)
    assert gguf.data.license == "apache-2.0"
    names = sorted(r.metric_name for r in gguf.data.eval_results)
    assert names == ["accuracy % (Q4_K_M, cot, n=64, 95% CI 55.0-77.0)", "accuracy % (Q8_0, cot, n=64, 95% CI 58.0-80.0)"]
    text = gguf.text
    assert "not a medical device" in text
    assert "llama-cli -hf alice/demo-med-GGUF:Q4_K_M" in text  # the Modelfile's FROM
    assert "ollama create demo -f Modelfile" in text and "ollama run hf.co/alice/demo-med-GGUF:Q4_K_M" in text
    assert "AutoPeftModelForCausalLM" in _card(demo_run, "demo-med-LoRA").text
    assert "AutoModelForCausalLM" in _card(demo_run, "demo-med").text


def test_dry_run_llama_cards_name_the_real_base_licence_and_data(llama_run: RunDir) -> None:
    result = dry_run(llama_run, "acme/Llama-3.2-1B-ReasonMed", "--language", "en")
    assert result.exit_code == 0, result.output
    merged = _card(llama_run, "Llama-3.2-1B-ReasonMed").data
    assert merged.base_model == LLAMA
    assert merged.license == "llama3.2"  # not apache-2.0: the base's own Hub licence id
    assert merged.datasets == ["lingshu-medical-mllm/ReasonMed"]
    assert merged.language == ["en"]
    assert (merged.pipeline_tag, merged.library_name, merged.base_model_relation) == ("text-generation", "transformers", "finetune")
    assert {"medical", "medtune", "lora"} <= set(merged.tags)
    by_config = {(r.dataset_type, r.metric_config): r for r in merged.eval_results}
    assert set(by_config) == {("qiaojin/PubMedQA", "loglik"), ("qiaojin/PubMedQA", "cot"), ("GBaker/MedQA-USMLE-4-options", "loglik")}
    pubmedqa = by_config[("qiaojin/PubMedQA", "cot")]
    assert pubmedqa.task_type == "text-generation"
    hub = get_benchmark("pubmedqa")  # eval loaded it from the hub: its id, config and split
    assert (pubmedqa.dataset_config, pubmedqa.dataset_split) == (hub.hub_config, hub.hub_split)
    assert pubmedqa.metric_value == 70.0 and "n=64" in pubmedqa.metric_name
    gguf = _card(llama_run, "Llama-3.2-1B-ReasonMed-GGUF").data
    assert (gguf.base_model, gguf.base_model_relation, gguf.license) == ("acme/Llama-3.2-1B-ReasonMed", "quantized", "llama3.2")
    assert (gguf.datasets, gguf.language, gguf.pipeline_tag, gguf.library_name) == (
        ["lingshu-medical-mllm/ReasonMed"], ["en"], "text-generation", "gguf")
    assert {"gguf", "medical"} <= set(gguf.tags)
    staged = _staged(llama_run, "Llama-3.2-1B-ReasonMed-GGUF")
    assert {"adapter/llama3.2-1b-reasonmed-lora-F16.gguf", "adapter/llama3.2-1b-reasonmed-base-F16.gguf",
            "adapter/Modelfile", "llama3.2-1b-reasonmed.imatrix", "Modelfile"} <= set(staged)
    assert "--lora adapter/llama3.2-1b-reasonmed-lora-F16.gguf" in _card(llama_run, "Llama-3.2-1B-ReasonMed-GGUF").text
    assert len(gguf.eval_results) == 6  # 2 files x 3 benchmark-modes
    assert {r.metric_config for r in gguf.eval_results} >= {"Q4_K_M, loglik", "Q8_0, cot"}  # the dotted run name is cut off
    lora = _card(llama_run, "Llama-3.2-1B-ReasonMed-LoRA").data
    assert (lora.base_model, lora.base_model_relation, lora.license) == (LLAMA, "adapter", "llama3.2")
    assert (lora.library_name, lora.datasets, lora.pipeline_tag) == ("peft", ["lingshu-medical-mllm/ReasonMed"], "text-generation")
    # The card round-trips through huggingface_hub's own model-index parser.
    reloaded = ModelCard(str(_card(llama_run, "Llama-3.2-1B-ReasonMed")))
    assert reloaded.data.to_dict()["model-index"][0]["name"] == "Llama-3.2-1B-ReasonMed"


def test_unfinished_export_is_not_pushed(tmp_path: Path) -> None:
    run = build_run(tmp_path, name="demo", base="embedded:smollm2-135m-instruct", license="apache-2.0",
                    data={"files": ["builtin:reasonmed-facts"]}, benchmarks=[], export_status="running")
    result = dry_run(run, "alice/demo", "--what", "gguf")
    assert isinstance(result.exception, ArtifactError)
    assert "stage 'export' has not finished in this run (last attempt: running)" in str(result.exception)
    result = dry_run(run, "alice/demo")  # without --what: every finished kind, and a note for the rest
    assert result.exit_code == 0, result.output
    assert "gguf: not pushed" in result.output
    assert sorted(p.name for p in run.publish.iterdir()) == ["demo", "demo-LoRA"]


def test_changed_file_and_stale_stage_are_refused(demo_run: RunDir) -> None:
    demo_run.gguf_file("Q8_0").write_bytes(GGUF_MAGIC + b"edited after export")
    result = dry_run(demo_run, "alice/demo", "--what", "gguf")
    assert isinstance(result.exception, ArtifactError) and "demo-Q8_0.gguf changed since medtune recorded" in str(result.exception)
    manifest = read_manifest(demo_run.root)
    manifest["stages"]["train"]["recorded_at"] = "2099-01-01T00:00:00+0000"  # train redone after merge
    atomic_write_json(demo_run.manifest_file, manifest)
    result = dry_run(demo_run, "alice/demo", "--what", "merged")
    assert isinstance(result.exception, ArtifactError) and "stage 'train' finished after 'merge'" in str(result.exception)


def test_base_and_licence_must_be_nameable(tmp_path: Path) -> None:
    run = build_run(tmp_path, name="local", base=str(tmp_path), license=None, data={"files": ["x.jsonl"]}, benchmarks=[])
    result = dry_run(run, "alice/local")
    assert isinstance(result.exception, ConfigError) and "--base-model" in str(result.exception)
    result = dry_run(run, "alice/local", "--base-model", LLAMA)
    assert isinstance(result.exception, ConfigError) and "--license" in str(result.exception)
    result = dry_run(run, "alice/local", "--base-model", LLAMA, "--license", "llama3.2")
    assert result.exit_code == 0, result.output
    assert _card(run, "local").data.base_model == LLAMA
    assert isinstance(dry_run(run, "not-a-repo").exception, ConfigError)


# ---- the upload, against the local Hub ------------------------------------------------------------

DRIVER = """
import sys, typer
from medtune.commands.push import command
from medtune.errors import MedtuneError
app = typer.Typer(add_completion=False)
app.command()(command)
try:
    app(sys.argv[1:])
except MedtuneError as exc:  # what medtune.cli.main does with expected failures
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture
def token() -> str:
    return "hf_" + secrets.token_urlsafe(24)


def push_cli(run: RunDir, hub: FakeHub, token: str | None, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "COLUMNS": "250", "NO_COLOR": "1"})
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", DRIVER, str(run.root), *args], check=False, env=env, capture_output=True,
                          text=True, timeout=120)


def _no_token_anywhere(token: str, root: Path, *outputs: subprocess.CompletedProcess) -> None:
    for result in outputs:
        assert token not in result.stdout and token not in result.stderr
    for path in root.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_push_uploads_the_verified_files_once_and_never_shows_the_token(demo_run: RunDir, token: str, tmp_path: Path) -> None:
    with RunningHub(FakeHub(token=token)) as hub:
        first = push_cli(demo_run, hub, token, "--repo", "alice/demo-med", home=tmp_path / "hf-home")
        assert first.returncode == 0, first.stderr + first.stdout
        for repo_name, stage in (("demo-med", "merge"), ("demo-med-LoRA", "train"), ("demo-med-GGUF", "export")):
            (commit,) = hub.commits(f"alice/{repo_name}")
            recorded = _recorded(demo_run, stage)
            assert commit["files"] == sorted([*recorded, "README.md"]) and commit["branch"] == "main"
            assert "medtune push: demo" in commit["summary"]
            for path, sha256 in recorded.items():
                assert hashlib.sha256(hub.file_bytes(f"alice/{repo_name}", path)).hexdigest() == sha256
                assert sha256 in commit["description"]
            card = ModelCard(hub.file_bytes(f"alice/{repo_name}", "README.md").decode())
            assert card.data.license == "apache-2.0" and "medtune" in card.data.tags
        # The weights went through LFS (preupload said so), the small files as regular git blobs.
        stored = hub.repos["alice/demo-med-GGUF"].branches["main"]
        assert stored["demo-Q4_K_M.gguf"].lfs_sha256 and stored["Modelfile"].content is not None
        assert len(hub.lfs_objects) == 5  # 2 safetensors + 3 GGUF files

        second = push_cli(demo_run, hub, token, "--repo", "alice/demo-med", home=tmp_path / "hf-home")
        assert second.returncode == 0, second.stderr + second.stdout
        assert all(len(hub.commits(f"alice/{r}")) == 1 for r in ("demo-med", "demo-med-LoRA", "demo-med-GGUF"))
        assert second.stdout.count("already up to date, nothing uploaded") == 3
        assert not [r for r in hub.writes() if r[0] == "PUT"][5:]  # no LFS upload on the re-push

        third = push_cli(demo_run, hub, token, "--repo", "alice/demo-med", "--what", "gguf", "--language", "en",
                         "--language", "de", home=tmp_path / "hf-home")  # only the card changes
        assert third.returncode == 0, third.stderr + third.stdout
        assert hub.commits("alice/demo-med-GGUF")[-1]["files"] == ["README.md"]
    _no_token_anywhere(token, tmp_path, first, second, third)


def test_push_refusals_come_before_any_upload(demo_run: RunDir, token: str, tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    with RunningHub(FakeHub(token=token)) as hub:
        missing = push_cli(demo_run, hub, None, "--repo", "alice/demo-med", home=home)
        assert missing.returncode == 2 and "no Hugging Face token" in missing.stderr
        assert hub.requests == []
        wrong = push_cli(demo_run, hub, "hf_not_the_token", "--repo", "alice/demo-med", home=home)
        assert wrong.returncode == 2 and "the Hub refused the token" in wrong.stderr
        other = push_cli(demo_run, hub, token, "--repo", "bob/demo-med", home=home)
        assert other.returncode == 2 and "cannot write bob/demo-med" in other.stderr
        hub.add_repo("alice/demo-med-GGUF", {"README.md": b"---\nlicense: mit\nbase_model: gpt2\n---\n# someone's model\n",
                                             "model.txt": b"weights"})
        taken = push_cli(demo_run, hub, token, "--repo", "alice/demo-med", home=home)
        assert taken.returncode == 2 and "alice/demo-med-GGUF already holds a different model" in taken.stderr
        lonely_gguf = push_cli(demo_run, hub, token, "--repo", "alice/other", "--what", "gguf", home=home)
        assert lonely_gguf.returncode == 2 and "alice/other does not exist on the Hub" in lonely_gguf.stderr
        hub.role = "read"
        read_only = push_cli(demo_run, hub, token, "--repo", "alice/demo-med", home=home)
        assert read_only.returncode == 2 and "the token is read-only" in read_only.stderr
        assert hub.writes() == []  # nothing was created, pre-uploaded or committed
        for result in (missing, wrong, other, taken, lonely_gguf, read_only):
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one clear line
    _no_token_anywhere(token, tmp_path, missing, wrong, other, taken, lonely_gguf, read_only)
    closed = FakeHub(token=token, url="http://127.0.0.1:9")  # nothing listens there
    offline = push_cli(demo_run, closed, token, "--repo", "alice/demo-med", home=home)
    assert offline.returncode == 2 and "cannot reach the Hub at http://127.0.0.1:9" in offline.stderr


def test_fine_grained_token_needs_repo_write_on_the_namespace() -> None:
    def identity(scoped: list[dict]) -> dict:
        return {"name": "alice", "orgs": [{"name": "acme", "roleInOrg": "admin"}],
                "auth": {"accessToken": {"role": "fineGrained", "fineGrained": {"scoped": scoped}}}}

    writes_acme = [{"entity": {"type": "org", "name": "acme"}, "permissions": ["repo.content.read", "repo.write"]}]
    check_can_write(identity(writes_acme), "acme/demo")  # allowed
    with pytest.raises(PublishError, match="no 'repo.write' permission on 'alice'"):
        check_can_write(identity(writes_acme), "alice/demo")
    reads_only = [{"entity": {"type": "user", "name": "alice"}, "permissions": ["repo.content.read"]}]
    with pytest.raises(PublishError, match="fine-grained token"):
        check_can_write(identity(reads_only), "alice/demo")


def test_push_as_a_pull_request_on_a_branch(demo_run: RunDir, token: str, tmp_path: Path) -> None:
    with RunningHub(FakeHub(token=token, orgs=[{"name": "acme", "roleInOrg": "write"}])) as hub:
        result = push_cli(demo_run, hub, token, "--repo", "acme/demo-med", "--what", "merged", "--private",
                          "--revision", "v1", "--create-pr", home=tmp_path / "hf-home")
        assert result.returncode == 0, result.stderr + result.stdout
        (commit,) = hub.commits("acme/demo-med")
        assert commit["branch"] == "refs/pr/1" and "README.md" in commit["files"]
        assert "v1" in hub.repos["acme/demo-med"].branches and hub.repos["acme/demo-med"].private
        assert "/discussions/1" in result.stdout
        branch = push_cli(demo_run, hub, token, "--repo", "acme/demo-med", "--what", "adapter", "--revision", "v2",
                          home=tmp_path / "hf-home")
        assert branch.returncode == 0, branch.stderr + branch.stdout
        (commit,) = hub.commits("acme/demo-med-LoRA")
        assert commit["branch"] == "v2" and "adapter_model.safetensors" in commit["files"]
        assert set(hub.repos["acme/demo-med-LoRA"].branches["main"]) == {".gitattributes"}  # main untouched
    _no_token_anywhere(token, tmp_path, result, branch)
