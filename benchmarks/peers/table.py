"""The peers' results: a row's derived figures (real tok/s, MFU), the rows of every device call in
benchmarks/results/train_vs_peers.json, same-call ratios, the bars, and the printed table."""

from __future__ import annotations

import json
from pathlib import Path

from medtune.benchmarking import read_results
from medtune.train.measure import mfu

BENCHMARK = "train_vs_peers"


def finish(row: dict) -> dict:
    """Add real tokens/s and MFU to a measured row."""
    if "seconds" in row and row["seconds"] > 0:
        tps = row["timed_real_tokens"] / row["seconds"]
        row["real_tokens_per_second"] = round(tps, 1)
        row["mfu"] = round(mfu(row["n_params"], tps), 4)
    return row



RATIO_PAIRS = (("{medtune}", "unsloth"), ("{medtune}", "trl"), ("{medtune}", "seed"),
               ("medtune-all-r16", "unsloth-all-r16"), ("medtune", "medtune-liger-off"),
               ("medtune", "medtune-host-syncs"), ("medtune-32k", "medtune"), ("medtune-dropout0", "unsloth-dropout0"),
               ("medtune-liger-swiglu-off", "medtune"), ("medtune-liger-flce-only", "medtune"),
               ("medtune-flce-only-dropout0", "medtune"), ("medtune-coord-descent", "medtune"),
               ("medtune-dropout0", "medtune"), ("medtune", "medtune-liger-previous"),
               ("medtune-no-input-cast", "medtune"), ("medtune-32k-dropout0", "medtune"),
               ("medtune", "medtune-unfused"), ("medtune-dropout0", "medtune-unfused-dropout0"),
               ("medtune-all-r16", "medtune-all-r16-unfused"), ("medtune-native-gqa", "medtune"),
               ("medtune-frozen-mlp", "medtune"), ("medtune-32k-frozen-mlp", "medtune-32k"),
               ("medtune-pointwise-autotune", "medtune"), ("medtune-combo-kernels", "medtune"),
               # issue 28: the defaults take FlashAttention-4 where installed; -varlen is torch's kernel
               ("medtune", "medtune-varlen"), ("medtune-3b-lora", "medtune-3b-lora-varlen"),
               ("medtune-8b-lora-gc", "medtune-8b-lora-gc-varlen"), ("medtune-8b-qlora-gc", "medtune-8b-qlora-gc-varlen"))


def read_rows_file(path: Path) -> list[dict]:
    """The rows one device call appended to its JSONL file (`run --out`)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def recorded_calls(results_dir: Path | None = None) -> list[dict]:
    """The device calls recorded in the results file, in order: each {"call": N, "rows": [...], ...}."""
    return read_results(BENCHMARK, results_dir)["runs"]


def calls_rows(calls: list[dict]) -> list[dict]:
    """The rows of the given calls, each marked with its call number.

    A row skipped for time in one call but measured in another is superseded and left out."""
    rows = [{**row, "call": call["call"]} for call in calls for row in call["rows"]]
    measured = {r["tag"] for r in rows if "skipped" not in r and "error" not in r}
    return [r for r in rows if not ("skipped" in r and r.get("tag") in measured)]


def call_ratios(rows: list[dict]) -> tuple[dict, str]:
    """Same-call ratios only (a ratio across two calls would fold in the machine's drift between them)."""
    ratios = {}
    medtune = "medtune"
    for call in sorted({r["call"] for r in rows}):
        by_tag = {r["tag"]: r for r in rows if r["call"] == call and "error" not in r and "skipped" not in r}
        # If the defaults row failed (e.g. a Liger + compile problem), its liger-off twin stands in, named.
        defaults = "medtune" if "medtune" in by_tag or "medtune-liger-off" not in by_tag else "medtune-liger-off"
        if "unsloth" in by_tag or call == 1:
            medtune = defaults
        for ours, theirs in RATIO_PAIRS:
            ours = ours.format(medtune=defaults)
            if ours in by_tag and theirs in by_tag and ours != theirs:
                a, b = by_tag[ours], by_tag[theirs]
                loss_gap = None
                if a.get("loss_at_equal_tokens") and b.get("loss_at_equal_tokens"):
                    loss_gap = round(a["loss_at_equal_tokens"] / b["loss_at_equal_tokens"] - 1, 4)
                key = f"{ours}/{theirs}"
                if key in ratios:  # the same pair in an earlier call keeps its figure, named by its call
                    earlier = ratios.pop(key)
                    ratios[f"{key} (call {earlier['call']})"] = earlier
                ratios[key] = {
                    "tokens_per_second_ratio": round(a["real_tokens_per_second"] / b["real_tokens_per_second"], 3),
                    "heldout_loss_relative_gap": loss_gap, "call": call}
    return ratios, medtune


def table_lines(rows: list[dict]) -> tuple[list[str], dict, list[str]]:
    """The printed table of `rows` (several calls), the same-call ratios and the bars."""
    profiles = [r for r in rows if "profile_of" in r]
    rows = [r for r in rows if "profile_of" not in r]
    ratios, medtune = call_ratios(rows)
    bars = bar_lines(rows, ratios, medtune)
    lines = row_lines(rows) + ratio_lines(ratios) + [f"bar: {b}" for b in bars]
    for entry in profiles:
        lines += profile_lines(entry)
    return lines, ratios, bars


def row_lines(rows: list[dict]) -> list[str]:
    header = f"{'row':34} {'call':>4} {'shape':5} {'real tok/s':>11} {'MFU':>6} {'peak GiB':>9} {'held-out loss':>13} {'tokens':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r.get('tag', '?'):34} {r['call']:>4} skipped: {r['skipped'][:70]}")
        elif "error" in r:
            lines.append(f"{r.get('tag', '?'):34} {r['call']:>4} {r.get('shape', ''):5} FAILED: {r['error'][:70]}")
        else:
            loss = r.get("loss_at_equal_tokens")
            lines.append(f"{r['tag']:34} {r['call']:>4} {r['shape']:5} {r['real_tokens_per_second']:11,.0f} {100 * r['mfu']:5.1f}% "
                         f"{r['peak_gib']:9.1f} {loss if loss is None else round(loss, 4)!s:>13} {r.get('real_tokens_trained', 0):10,}")
    return lines


def ratio_lines(ratios: dict) -> list[str]:
    lines = []
    for name, pair in ratios.items():
        gap = pair["heldout_loss_relative_gap"]
        lines.append(f"{name.split(' (call')[0]} (call {pair['call']}): {pair['tokens_per_second_ratio']:.2f}x real tok/s"
                     + ("" if gap is None else f", held-out loss {100 * gap:+.2f}%"))
    return lines


def bar_lines(rows: list[dict], ratios: dict, medtune: str) -> list[str]:
    """The issue bars, each from the latest call's row of its tag."""
    by_tag = {r["tag"]: r for r in rows if "error" not in r and "skipped" not in r}
    bars = []
    pair = ratios.get(f"{medtune}/unsloth")
    if pair:
        gap = pair["heldout_loss_relative_gap"]
        bars.append(f"medtune/Unsloth >= 1.5x: {pair['tokens_per_second_ratio']:.2f}x "
                    f"({'met' if pair['tokens_per_second_ratio'] >= 1.5 else 'missed'}); held-out loss within 2%: "
                    f"{'n/a' if gap is None else ('met' if abs(gap) <= 0.02 else 'missed') + f' ({100 * gap:+.2f}%)'}")
    if medtune in by_tag:
        m = by_tag[medtune]
        bars.append(f"MFU >= 60% (>= 95k real tok/s) at the defaults: {100 * m['mfu']:.1f}%, "
                    f"{m['real_tokens_per_second']:,.0f} tok/s ({'met' if m['mfu'] >= 0.6 else 'missed'}; call {m['call']}, "
                    f"{m.get('machine', '?')})")
    if "medtune-8b-qlora-gc" in by_tag:
        q = by_tag["medtune-8b-qlora-gc"]
        bars.append(f"QLoRA 8B <= 24 GiB: {q['peak_gib']:.1f} GiB ({'met' if q['peak_gib'] <= 24 else 'missed'}), "
                    f"{q['real_tokens_per_second']:,.0f} tok/s")
    if "medtune-8b-lora-gc" in by_tag or "medtune-8b-lora" in by_tag:
        r = by_tag.get("medtune-8b-lora-gc") or by_tag["medtune-8b-lora"]
        bars.append(f"8B LoRA on one GPU: trained, peak {r['peak_gib']:.1f} GiB, {r['real_tokens_per_second']:,.0f} tok/s")
    return bars


def profile_lines(entry: dict) -> list[str]:
    p = entry.get("profile")
    if not p:
        return [f"profile of {entry['profile_of']}: {entry.get('error')}"]
    shares = [v for k, v in p.items()
              if k.startswith("share_") and k not in ("share_gpu_idle", "share_data_loading_host") and v is not None]
    if sum(shares) > 1.001:  # written by the summarizer before its fix (see summarize_profile)
        return [f"profile of {entry['profile_of']} (call {entry['call']}): shares sum to more than 100%: kernel time "
                "was divided by one step's wall time; superseded"]
    if p.get("window_s") and p.get("gpu_busy_s", 0) > 1.01 * p["window_s"]:
        return [f"profile of {entry['profile_of']} (call {entry['call']}): busy longer than its window: torch.compile's "
                "GPU ranges were counted as kernels (matmuls inside compiled graphs counted as other kernels too); superseded"]
    lines = [f"profile of {entry['profile_of']} (call {entry['call']}): step {p['step_wall_s']:.3f} s, {p['kernels']} kernels "
             f"in a {p.get('window_s', 0):.3f} s window; share of GPU kernel time (idle: of the window):",
             "  " + ", ".join(f"{k.removeprefix('share_')} {100 * v:.1f}%" for k, v in p.items()
                             if k.startswith("share_") and v is not None)]
    if p.get("kernel_families"):
        lines.append("  by kernel name: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in p["kernel_families"].items()))
        if "attention" not in p["kernel_families"] and p.get("share_attention"):
            # written before flash kernels were told from GEMMs (their names carry cutlass types)
            lines.append(f"  (gemm here holds the flash-attention kernels too: {100 * p['share_attention']:.1f}% attention)")
    return lines
