"""The side-by-side training benchmark's CPU-checkable parts: workload, tokenizer, counting, profile summary."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from bench_scripts import load_benchmark_package

from medtune.benchmarking import append_run
from medtune.train.measure import synthetic_examples


def _workload():
    return load_benchmark_package("peers", "workload")


def _profiler():
    return load_benchmark_package("peers", "profiler")


def _table():
    return load_benchmark_package("peers", "table")


def test_every_system_gets_the_same_examples():
    a, b = synthetic_examples(64, 128256, 0), synthetic_examples(64, 128256, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    lengths = np.array([len(t) for t in synthetic_examples(2048, 128256, 0)])
    assert 420 <= np.median(lengths) <= 480 and lengths.min() >= 64 and lengths.max() <= 2048
    assert max(int(t.max()) for t in a) < 128000 and min(int(t.min()) for t in a) >= 3  # no special or pad ids
    heldout = synthetic_examples(24, 128256, 100)
    assert not any(np.array_equal(h[:64], t[:64]) for h in heldout for t in a)


def test_synthetic_tokenizer_has_llama3_special_ids():
    tokenizer = _workload().synthetic_tokenizer(128256, tiny=False)
    assert len(tokenizer) == 128256
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (128000, 128009, 128004)
    assert tokenizer("t5 t77")["input_ids"] == [5, 77]


def test_counting_collator_counts_real_tokens_only():
    bench = _workload()
    padded = bench.CountingCollator(lambda f: {"input_ids": torch.zeros(2, 4), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}, 0)
    padded([None])
    flat = bench.CountingCollator(lambda f: {"input_ids": torch.tensor([[5, 6, 7, 0]])}, 0)
    flat([None])
    flat([None])
    assert (padded.real, flat.real, flat.trained(1)) == (5, 6, 3)


def test_profile_summary_splits_a_lora_step(tiny_llama_dir):
    """On CPU each op's self time is bucketed; LoRA matmuls are told apart by the rank in their shapes."""
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    bench = _profiler()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(5, 400, (2, 32), generator=torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    summary = bench.summarize_profile(prof.events(), step_wall_s=10.0, lora_rank=8)
    shares = {k: v for k, v in summary.items() if k.startswith("share_") and v is not None}
    assert summary["share_lora_matmul"] > 0 and summary["share_base_matmul"] > 0 and summary["share_optimizer"] > 0
    assert summary["share_attention"] > 0
    assert 0 < sum(shares.values()) <= 1.0 + 6 * 5e-5  # six shares, each rounded to 4 decimals


def test_profile_summary_leaves_out_compiled_graph_ranges():
    """torch.compile's GPU ranges span kernels that are counted on their own: counting both doubled the busy time."""
    bench = _profiler()

    def span(start, end):
        return SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start)

    def cpu_op(name, kernels, shapes=()):
        return SimpleNamespace(name=name, device_type="DeviceType.CPU", cpu_parent=None, input_shapes=list(shapes),
                               kernels=[SimpleNamespace(name=k, duration=us) for k, us in kernels],
                               time_range=span(0, 1), self_cpu_time_total=1)

    def gpu(name, start, end):
        return SimpleNamespace(name=name, device_type="DeviceType.CUDA", time_range=span(start, end))

    graph = "## Call CompiledFxGraph f4k3 ##"
    events = [
        cpu_op("aten::mm", [("nvjet_sm90_tst_256x128_64x4", 60)], shapes=[[4096, 2048], [2048, 2048]]),
        cpu_op(graph, [("triton_poi_fused_add_0", 30), (graph, 100)]),
        cpu_op("aten::mm", [("nvjet_sm90_tst_64x8", 10)], shapes=[[4096, 2048], [2048, 8]]),
        gpu("nvjet_sm90_tst_256x128_64x4", 0, 60), gpu("triton_poi_fused_add_0", 60, 90), gpu("nvjet_sm90_tst_64x8", 90, 100),
        gpu(graph, 0, 100),
    ]
    summary = bench.summarize_profile(events, step_wall_s=0.0001, lora_rank=8)
    assert summary["gpu_busy_s"] == 0.0001 and summary["window_s"] == 0.0001 and summary["share_gpu_idle"] == 0
    assert (summary["share_base_matmul"], summary["share_lora_matmul"], summary["share_other_kernels"]) == (0.6, 0.1, 0.3)
    assert summary["kernel_families"] == {"gemm": 0.7, "inductor_triton": 0.3}
    assert graph not in summary["top_kernels_ms"]
    assert bench.kernel_family("_triton_rope") == "liger_triton"
    flash = "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, cutlass::bfloat16_t>>"
    assert bench.kernel_family(flash) == "attention"


def test_rows_of_two_calls_give_ratios_within_a_call_only(tmp_path):
    """Calls recorded in the results file (medtune.benchmarking's schema), each run tagged with its call."""
    bench = _table()
    row = lambda tag, tps, **kw: {"tag": tag, "shape": "1b", "real_tokens_per_second": tps, "mfu": tps / 160_000,
                                  "peak_gib": 20.0, "loss_at_equal_tokens": 12.0, "command": kw.get("command", "c1")}
    append_run(bench.BENCHMARK, [row("medtune", 80_000), row("unsloth", 40_000),
                                 {"tag": "medtune-liger-off", "skipped": "-1 s left"}, {"tag": "seed", "error": "timed out"}],
               results_dir=tmp_path, call=1)
    append_run(bench.BENCHMARK, [row("medtune", 90_000, command="c2"), row("medtune-liger-off", 60_000, command="c2")],
               results_dir=tmp_path, call=2)
    calls = bench.recorded_calls(tmp_path)
    rows = bench.calls_rows(calls)
    assert [(r["tag"], r["call"]) for r in rows] == [("medtune", 1), ("unsloth", 1), ("seed", 1), ("medtune", 2),
                                                     ("medtune-liger-off", 2)]  # the skipped row is superseded
    ratios, defaults = bench.call_ratios(rows)
    assert defaults == "medtune"
    assert ratios["medtune/unsloth"] == {"tokens_per_second_ratio": 2.0, "heldout_loss_relative_gap": 0.0, "call": 1}
    assert ratios["medtune/medtune-liger-off"]["tokens_per_second_ratio"] == 1.5  # 90k / 60k, both from call 2
    assert ratios["medtune/medtune-liger-off"]["call"] == 2

    # The same pair measured again in a later call (a new rows file): the latest is the plain key, the earlier one is kept.
    third = tmp_path / "call3.jsonl"
    third.write_text("\n".join(json.dumps(r) for r in [row("medtune", 99_000, command="c3"),
                                                       row("medtune-liger-off", 90_000, command="c3")]) + "\n")
    new = {"call": 3, "rows": bench.read_rows_file(third)}
    lines, ratios, bars = bench.table_lines(bench.calls_rows(calls + [new]))
    assert ratios["medtune/medtune-liger-off"]["call"] == 3 and ratios["medtune/medtune-liger-off"]["tokens_per_second_ratio"] == 1.1
    assert ratios["medtune/medtune-liger-off (call 2)"]["tokens_per_second_ratio"] == 1.5
    assert any(line.startswith("medtune/unsloth (call 1): 2.00x") for line in lines)
    assert bars[0].startswith("medtune/Unsloth >= 1.5x: 2.00x (met)")


def test_the_historic_calls_are_all_in_one_results_file():
    calls = _table().recorded_calls()
    assert [c["call"] for c in calls[:13]] == list(range(1, 14))
    assert all(c["rows"] and c["date"] for c in calls)
