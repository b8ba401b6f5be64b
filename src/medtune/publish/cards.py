"""The Hub card (README.md) of each repo a push makes: metadata the Hub reads, then the text a user reads.

Metadata, per kind:
    merged   base_model: the base's hub id, base_model_relation: finetune, library_name: transformers
    adapter  base_model: the base's hub id, base_model_relation: adapter,  library_name: peft
    gguf     base_model: the merged repo,   base_model_relation: quantized, library_name: gguf
and for all: license (model.license), datasets (hub ids of the training data, when it has one),
language, tags, pipeline_tag, and a model-index with every benchmark score medtune recorded for
the artifact in that repo (n and the bootstrap 95% CI in each metric's name and args).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from medtune.errors import ConfigError
from medtune.publish.plan import HUB_ID, PushPlan, RepoPlan
from medtune.rundir import MODELFILE, quant_name
from medtune.tasks import expand, get_benchmark

PIPELINE_TAG = "text-generation"
COMMON_TAGS = ["medical", "medtune", "text-generation", "conversational"]
KIND_TAGS = {"merged": ["lora", "safetensors"], "adapter": ["lora", "peft"], "gguf": ["gguf", "llama.cpp", "ollama"]}
LIBRARY = {"merged": "transformers", "adapter": "peft", "gguf": "gguf"}
RELATION = {"merged": "finetune", "adapter": "adapter", "gguf": "quantized"}
# Derived training sources (data.files entries NAME:PATH) and the benchmark whose data they convert.
DERIVED_SOURCE_BENCHMARK = {"pubmedqa-train": "pubmedqa", "pubmedqa-reasoning": "pubmedqa"}

DISCLAIMER = (
    "## Medical disclaimer\n\n"
    "This model is for research on medical question answering. **It is not a medical device and gives no "
    "medical advice.** It can write fluent, confident and wrong answers. Do not use it to diagnose, treat or "
    "triage anyone, and do not let it replace a qualified health professional. The benchmark scores below "
    "measure multiple-choice accuracy on public exam-style questions; they do not show clinical safety."
)


def attach_cards(plan: PushPlan) -> None:
    """Build every repo's card from the plan (metadata + text)."""
    for repo in plan.repos:
        repo.card = build_card(plan, repo)


def build_card(plan: PushPlan, repo: RepoPlan) -> ModelCard:
    data = card_data(plan, repo)
    text = "\n\n".join(
        part
        for part in (
            _intro(plan, repo),
            _usage(plan, repo),
            _eval_table(plan, repo),
            _files_table(repo),
            _training(plan),
            DISCLAIMER,
            _licence(plan),
        )
        if part
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}\n")


def card_data(plan: PushPlan, repo: RepoPlan) -> ModelCardData:
    """The metadata block of `repo`'s card."""
    base = plan.repo_id("merged") if repo.kind == "gguf" else plan.base_model
    results = eval_results(plan, repo)
    return ModelCardData(
        base_model=base,
        base_model_relation=RELATION[repo.kind],
        license=plan.license,
        datasets=training_datasets(plan.run.saved_config()) or None,
        language=plan.language,
        library_name=LIBRARY[repo.kind],
        pipeline_tag=PIPELINE_TAG,
        tags=[*COMMON_TAGS, *KIND_TAGS[repo.kind]],
        model_name=repo.repo_id.split("/", 1)[1] if results else None,
        eval_results=results or None,
    )


def training_datasets(saved: dict[str, Any]) -> list[str]:
    """Hub ids of the training data: data.dataset, and the benchmark sets a derived source converts.
    Local files have none (the card's text names them)."""
    data = saved.get("data") or {}
    ids = [str(data["dataset"])] if data.get("dataset") else []
    for entry in data.get("files") or []:
        benchmark = DERIVED_SOURCE_BENCHMARK.get(str(entry).partition(":")[0])
        if benchmark and get_benchmark(benchmark).hub_id not in ids:
            ids.append(get_benchmark(benchmark).hub_id)
    return [i for i in ids if HUB_ID.fullmatch(i)]


def rows_for(plan: PushPlan, repo: RepoPlan) -> list[dict[str, Any]]:
    """The eval rows that scored the artifact in `repo` (every GGUF file's rows for the GGUF repo)."""
    if repo.kind == "gguf":
        return [r for r in plan.eval_rows if str(r.get("artifact", "")).startswith("gguf:")]
    return [r for r in plan.eval_rows if r.get("artifact") == repo.kind]


def _gguf_label(plan: PushPlan, row: dict[str, Any]) -> str:
    """`gguf:llama3.2-1b-x-Q4_K_M` -> `Q4_K_M` (eval labels a GGUF file by its stem)."""
    stem = str(row["artifact"]).split(":", 1)[1]
    return quant_name(Path(f"{stem}.gguf"), plan.run.name)


def eval_results(plan: PushPlan, repo: RepoPlan) -> list[EvalResult]:
    """One model-index metric per benchmark x mode (x GGUF file) that medtune scored for this repo."""
    results = []
    saved = plan.run.saved_config()
    for row in rows_for(plan, repo):
        benchmark = _benchmark_facts(str(row["benchmark"]), saved)
        low, high = (100 * float(x) for x in row["ci95"])
        quant = f"{_gguf_label(plan, row)}, " if repo.kind == "gguf" else ""
        results.append(
            EvalResult(
                task_type=PIPELINE_TAG,
                task_name="Medical question answering",
                dataset_type=benchmark["type"],
                dataset_name=benchmark["name"],
                dataset_config=benchmark["config"],
                dataset_split=benchmark["split"],
                dataset_args={**(benchmark["args"] or {}), **({"limit": row["limit"]} if row.get("limit") else {})} or None,
                metric_type="accuracy",
                metric_value=round(100 * float(row["accuracy"]), 2),
                metric_name=f"accuracy % ({quant}{row['mode']}, n={row['n']}, 95% CI {low:.1f}-{high:.1f})",
                metric_config=f"{quant}{row['mode']}",
                metric_args={"n": int(row["n"]), "ci95_low": round(low, 2), "ci95_high": round(high, 2)},
            )
        )
    return results


def _benchmark_facts(name: str, saved: dict[str, Any]) -> dict[str, Any]:
    """Which data a benchmark row was scored on: the hub dataset (id, config, split) when eval loaded it
    from the hub; when the run gave local files (eval.benchmarks[].path) the split is not named."""
    try:
        benchmark = get_benchmark(name)
    except ConfigError:  # a group name or a benchmark this version no longer registers
        return {"type": name, "name": name, "config": None, "split": None, "args": None}
    local = _local_path(name, saved) or benchmark.default_path
    return {
        "type": benchmark.hub_id or name,
        "name": benchmark.title,
        "config": benchmark.hub_config,
        "split": None if local else benchmark.hub_split,
        "args": {"source": "local files in the benchmark's release format"} if local else None,
    }


def _local_path(name: str, saved: dict[str, Any]) -> str | None:
    for spec in (saved.get("eval") or {}).get("benchmarks") or []:
        if isinstance(spec, dict) and spec.get("path") and name in expand(str(spec.get("name"))):
            return str(spec["path"])
    return None


def _intro(plan: PushPlan, repo: RepoPlan) -> str:
    name = repo.repo_id.split("/", 1)[1]
    what = {
        "merged": f"A LoRA fine-tune of [{plan.base_model}](https://huggingface.co/{plan.base_model}), merged into "
        "full weights (safetensors, for transformers)",
        "adapter": f"The LoRA adapter (PEFT) of a fine-tune of [{plan.base_model}](https://huggingface.co/{plan.base_model})",
        "gguf": f"GGUF files of [{plan.repo_id('merged')}](https://huggingface.co/{plan.repo_id('merged')}), a LoRA "
        f"fine-tune of [{plan.base_model}](https://huggingface.co/{plan.base_model}), for llama.cpp and Ollama",
    }[repo.kind]
    siblings = [f"[{plan.repo_id(k)}](https://huggingface.co/{plan.repo_id(k)})" for k in plan.kinds() if k != repo.kind]
    return (
        f"# {name}\n\n{what}, for medical question answering with step-by-step reasoning. Made with medtune "
        f"(run `{plan.run.name}`): every file here is one medtune recorded and verified, uploaded with the sha256 "
        "its manifest holds (merged weights checked against the adapter's logits, GGUF files against the merged "
        "model and the 16-bit file)."
        + (f"\n\nAlso published from this run: {', '.join(siblings)}." if siblings else "")
    )


def _example_gguf(repo: RepoPlan) -> str:
    """The GGUF file the examples use: the Modelfile's FROM, else the first quant, else the first file."""
    names = [f.path_in_repo for f in repo.files if f.path_in_repo.endswith(".gguf") and "/" not in f.path_in_repo]
    modelfile = next((f.source for f in repo.files if f.path_in_repo == MODELFILE), None)
    if modelfile is not None:
        for line in modelfile.read_text(encoding="utf-8").splitlines():
            if line.startswith("FROM "):
                chosen = line.split()[1].removeprefix("./")
                if chosen in names:
                    return chosen
    quants = [n for n in names if not n.upper().endswith(("F16.GGUF", "BF16.GGUF", "F32.GGUF"))]
    return (quants or names or ["model.gguf"])[0]


def _usage(plan: PushPlan, repo: RepoPlan) -> str:
    repo_id, local = repo.repo_id, repo.repo_id.split("/", 1)[1]
    if repo.kind == "gguf":
        gguf = _example_gguf(repo)
        quant = quant_name(Path(gguf), plan.run.name)
        has_modelfile = any(f.path_in_repo == MODELFILE for f in repo.files)
        ollama = (
            f"# Ollama, with the Modelfile medtune wrote (chat template, stop tokens, system prompt):\n"
            f"hf download {repo_id} --local-dir {local}\n"
            f"cd {local} && ollama create {plan.run.name} -f Modelfile && ollama run {plan.run.name}\n"
            if has_modelfile
            else ""
        )
        return (
            "## How to run it\n\n```bash\n"
            f"# llama.cpp (the chat template and the stop token are inside the file)\n"
            f"llama-cli -hf {repo_id}:{quant} -cnv\n"
            f"{ollama}"
            f"# Ollama, straight from the Hub\n"
            f"ollama run hf.co/{repo_id}:{quant}\n```\n\n"
            "Every quant, the 16-bit file and the importance matrix they were made with are in this repo."
            + _adapter_gguf_note(repo)
        )
    if repo.kind == "adapter":
        return (
            "## How to run it\n\n```python\n"
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  # loads {plan.base_model} + this adapter\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            + _chat_snippet()
            + "```"
        )
    return (
        "## How to run it\n\n```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        + _chat_snippet()
        + "```"
    )


def _adapter_gguf_note(repo: RepoPlan) -> str:
    """The LoRA adapter as GGUF (export.adapter_gguf), when the run made it: gguf/adapter/ in the run."""
    names = [f.path_in_repo for f in repo.files if f.path_in_repo.startswith("adapter/")]
    lora = next((n for n in names if "-lora-" in n and n.endswith(".gguf")), None)
    base = next((n for n in names if n.endswith(".gguf") and n != lora), None)
    if not lora or not base:
        return ""
    return (f" `adapter/` holds the LoRA adapter as GGUF with the 16-bit base it applies to (and a Modelfile with "
            f"ADAPTER): `llama-cli -m {base} --lora {lora} -cnv`.")


def _chat_snippet() -> str:
    return (
        'messages = [{"role": "user", "content": "A 45-year-old has sudden severe headache and neck stiffness. '
        'What is the most likely diagnosis?"}]\n'
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
        "return_dict=True)\n"
        "output = model.generate(**inputs, max_new_tokens=512)\n"
        "print(tokenizer.decode(output[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n"
    )


def _eval_table(plan: PushPlan, repo: RepoPlan) -> str:
    own = rows_for(plan, repo)
    if not own:
        return "## Evaluation\n\nNo benchmark score was recorded for this artifact by the run (`eval.artifacts`)."
    base = [r for r in plan.eval_rows if r.get("artifact") == "base"]
    lines = [
        "## Evaluation",
        "",
        ("Scored by medtune's eval stage (the same prompts and scoring for every artifact; 95% confidence interval "
         "by bootstrap over the items). The base model's rows are for comparison."),
        "",
        "| benchmark | mode | model | accuracy % | 95% CI | n |",
        "|---|---|---|---:|---|---:|",
    ]
    order = {(r["benchmark"], r["mode"]): i for i, r in enumerate(own)}
    rows = sorted((r for r in [*base, *own] if (r["benchmark"], r["mode"]) in order),
                  key=lambda r: order[(r["benchmark"], r["mode"])])  # stable: base first within each benchmark x mode
    for row in rows:
        low, high = (100 * float(x) for x in row["ci95"])
        who = (f"{_gguf_label(plan, row)} (GGUF)" if str(row["artifact"]).startswith("gguf:") else str(row["artifact"]))
        lines.append(f"| {row['benchmark']} | {row['mode']} | {who} | {100 * float(row['accuracy']):.1f} | "
                     f"{low:.1f}-{high:.1f} | {row['n']} |")
    return "\n".join(lines)


def _files_table(repo: RepoPlan) -> str:
    lines = ["## Files", "", "| file | size | sha256 |", "|---|---:|---|"]
    for planned in repo.files:
        lines.append(f"| `{planned.path_in_repo}` | {_size(planned.size)} | `{planned.sha256}` |")
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size:,} bytes"


def _training(plan: PushPlan) -> str:
    saved = plan.run.saved_config()
    data, lora, train = saved.get("data") or {}, saved.get("lora") or {}, saved.get("train") or {}
    source = data.get("dataset") or ", ".join(str(f) for f in data.get("files") or []) or "?"
    targets = lora.get("target_modules")
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    return (
        "## Training\n\n"
        f"- Data: `{source}` (format {data.get('format', '?')}, at most {data.get('max_length', '?')} tokens per example)\n"
        f"- LoRA r={lora.get('r', '?')}, alpha={lora.get('alpha', '?')}, dropout={lora.get('dropout', '?')} on {targets}\n"
        f"- {train.get('epochs', '?')} epochs, learning rate {train.get('learning_rate', '?')}, loss on the assistant's "
        "tokens only (end-of-turn included, so the model learns to stop)"
    )


def _licence(plan: PushPlan) -> str:
    return (
        "## Licence\n\n"
        f"The weights inherit the base model's licence (`{plan.license}`, see "
        f"[{plan.base_model}](https://huggingface.co/{plan.base_model})); check the training data's own terms "
        "before redistributing."
    )
