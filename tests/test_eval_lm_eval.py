"""medtune's prompt_style lm_eval against EleutherAI's lm-evaluation-harness itself (PyPI lm_eval):
the same prompts as lm-eval's built-in tasks, and the same per-choice log-likelihoods from its HF
backend on a tiny model; our task YAML on PubMedQA-format files through lm-eval's own CLI (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="the lm_eval extra: pip install -e '.[lm_eval]'")

from medtune.eval.backends import TransformersBackend  # noqa: E402
from medtune.eval.scoring import score_loglik  # noqa: E402
from medtune.tasks import Item, load_items  # noqa: E402
from medtune.tasks.prompts import lm_eval_prompt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "benchmarks" / "lm_eval_tasks"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
YNM = {k: k for k in ("yes", "no", "maybe")}
MC_OPTIONS = ["Ulnar nerve", "Radial nerve", "Median nerve", "Axillary nerve"]


def write_pubmedqa(folder: Path, n: int = 6) -> Path:
    """A PubMedQA-format release folder (ori_pqal.json + test_ground_truth.json) of n made-up records."""
    folder.mkdir(parents=True, exist_ok=True)
    decisions = ["yes", "no", "maybe"]
    records = {str(1000 + k): {"QUESTION": f"Does drug {k} lower blood pressure in adults?",
                               "CONTEXTS": [f"Trial {k} enrolled {20 + k} adults.", "Pressure fell." if k % 2 else "No change."],
                               "final_decision": decisions[k % 3], "LONG_ANSWER": "Made up."} for k in range(n)}
    (folder / "ori_pqal.json").write_text(json.dumps(records))
    (folder / "test_ground_truth.json").write_text(json.dumps({pmid: r["final_decision"] for pmid, r in records.items()}))
    return folder


def test_pubmedqa_prompt_is_lm_evals_builtin_prompt(tmp_path):
    from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

    folder = write_pubmedqa(tmp_path / "pq")
    records = json.loads((folder / "ori_pqal.json").read_text())
    for item in load_items("pubmedqa", folder):
        assert lm_eval_prompt(item) == doc_to_text(records[item.id])


def test_multiple_choice_prompts_are_lm_evals():
    import jinja2
    import yaml
    from lm_eval.tasks.medmcqa.utils_medmcqa import doc_to_text as medmcqa_text
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text as medqa_text

    letters = dict(zip("ABCD", MC_OPTIONS))
    medmcqa = Item("1", "Which nerve supplies the thenar muscles?", letters, "C", benchmark="medmcqa")
    assert lm_eval_prompt(medmcqa) == medmcqa_text({"question": medmcqa.question, **dict(zip(("opa", "opb", "opc", "opd"), MC_OPTIONS))})
    medqa = Item("1", "A 30-year-old has wrist drop. Which nerve?", letters, "B", benchmark="medqa")
    assert lm_eval_prompt(medqa) == medqa_text({"sent1": medqa.question, **{f"ending{k}": o for k, o in enumerate(MC_OPTIONS)}})
    # MMLU: the subject's description, then the default template (a Jinja string in the task YAML).
    template = yaml.safe_load((LM_EVAL_TASKS / "mmlu" / "default" / "_default_template_yaml").read_text())
    subject = yaml.safe_load((LM_EVAL_TASKS / "mmlu" / "default" / "mmlu_anatomy.yaml").read_text())
    expected = subject["description"] + jinja2.Template(template["doc_to_text"]).render(
        question=medqa.question, choices=MC_OPTIONS)
    assert lm_eval_prompt(Item("1", medqa.question, letters, "B", benchmark="mmlu_anatomy")) == expected
    assert template["doc_to_choice"] == list(letters) and template["output_type"] == "multiple_choice"


def test_our_task_yaml_mirrors_the_builtin_task():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    ours = yaml.load((TASKS / "pubmedqa_local.yaml").read_text(), Loader=Loader)
    builtin = yaml.load((LM_EVAL_TASKS / "pubmedqa" / "pubmedqa.yaml").read_text(), Loader=Loader)
    for key in ("output_type", "doc_to_target", "doc_to_choice", "metric_list"):
        assert ours[key] == builtin[key], key
    assert ours.get("target_delimiter", " ") == builtin.get("target_delimiter", " ") == " "
    assert ours["doc_to_text"] == "!function utils.doc_to_text"  # utils re-exports the built-in function
    sys.path.insert(0, str(TASKS))
    try:
        import utils
        from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

        assert utils.doc_to_text is doc_to_text
    finally:
        sys.path.remove(str(TASKS))
        sys.modules.pop("utils", None)


def test_task_loader_reads_the_release_files(tmp_path):
    sys.path.insert(0, str(TASKS))
    try:
        import utils

        folder = write_pubmedqa(tmp_path / "pq", n=4)
        test = utils.load_pubmedqa_test(pubmedqa_dir=str(folder), version=1.0, pretrained="ignored")["test"]
        assert [row["pubid"] for row in test] == [item.id for item in load_items("pubmedqa", folder)]
        assert test[1]["final_decision"] == "no" and len(test[1]["CONTEXTS"]) == 2
        with pytest.raises(FileNotFoundError, match="pubmedqa_dir"):
            utils.load_pubmedqa_test(pubmedqa_dir=str(tmp_path / "missing"))
    finally:
        sys.path.remove(str(TASKS))
        sys.modules.pop("utils", None)


def _mc_items() -> list[Item]:
    letters = dict(zip("ABCD", MC_OPTIONS))
    return [Item(str(k), f"Question {k}: which nerve is hurt " + "badly " * k + "?", letters, "ABCD"[k % 4],
                 benchmark="mmlu_anatomy") for k in range(4)]


@pytest.mark.parametrize("kind", ["pubmedqa", "mmlu"])
def test_loglik_matches_lm_evals_hf_backend(kind, tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """Every per-choice log-likelihood medtune computes in lm_eval style equals lm-eval's own
    HFLM.loglikelihood on the same tiny model, and so does every answer."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    items = load_items("pubmedqa", write_pubmedqa(tmp_path / "pq")) if kind == "pubmedqa" else _mc_items()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    smollm2_tokenizer.pad_token = "<|endoftext|>"
    ours = score_loglik(TransformersBackend(model, smollm2_tokenizer, batch_size=3), items, prompt_style="lm_eval")

    lm = HFLM(pretrained=str(tiny_llama_dir), dtype="float32", device="cpu", batch_size=2)
    requests = [Instance("loglikelihood", doc={}, arguments=(lm_eval_prompt(item), " " + label), idx=k)
                for item in items for k, label in enumerate(item.options)]
    theirs = iter(loglik for loglik, _ in lm.loglikelihood(requests, disable_tqdm=True))
    for item, prediction in zip(items, ours):
        reference = {label: next(theirs) for label in item.options}
        assert prediction.scores == pytest.approx(reference, abs=2e-4)
        assert prediction.predicted == max(reference, key=reference.get)


@pytest.mark.slow
def test_lm_eval_cli_runs_our_task_on_local_files(tiny_llama_dir, tmp_path):
    """lm-eval's own CLI with --include_path and our YAML reads the local files and logs every item."""
    folder = write_pubmedqa(tmp_path / "pq")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
               f"pretrained={tiny_llama_dir},dtype=float32", "--device", "cpu", "--tasks", "pubmedqa_local",
               "--include_path", str(TASKS), "--batch_size", "4", "--log_samples", "--output_path", str(out),
               "--metadata", json.dumps({"pubmedqa_dir": str(folder)})]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO / "src"), "HOME": str(tmp_path)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = [json.loads(line) for line in next(out.rglob("samples_pubmedqa_local_*.jsonl")).read_text().splitlines()]
    assert sorted(s["doc"]["pubid"] for s in samples) == sorted(json.loads((folder / "test_ground_truth.json").read_text()))
    assert all(len(s["filtered_resps"]) == 3 for s in samples)
