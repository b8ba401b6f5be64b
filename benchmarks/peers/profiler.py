"""A one-step profile of a training run: where the GPU's time goes (GEMMs, LoRA matmuls, attention,
Inductor's generated kernels, idle), by operator and by kernel name."""

from __future__ import annotations

import json
import time

import torch

from .workload import log


def StepProfiler(step: int, lora_rank: int):  # noqa: N802 (a factory: transformers is imported late)
    """A TrainerCallback that profiles optimizer step `step` and summarises it with `summarize_profile`."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class _StepProfiler(TrainerCallback):
        summary: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step - 1:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = profile(activities=activities, record_shapes=True)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and hasattr(self, "prof"):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)

        def summarize(self) -> dict:
            self.summary = summarize_profile(self.prof.events(), self.wall, lora_rank)
            log("  profile: " + json.dumps({k: v for k, v in self.summary.items() if k != "top_kernels_ms"}))
            return self.summary

    return _StepProfiler()


_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_mm")
_ATTENTION_WORDS = ("varlen", "flash", "attention", "sdpa", "fmha", "efficient_attention")


def _ancestors(event):
    node = event.cpu_parent
    while node is not None:
        yield node
        node = node.cpu_parent


def _is_lora_matmul(event, rank: int) -> bool:
    for shape in getattr(event, "input_shapes", None) or []:
        if isinstance(shape, (list, tuple)) and len(shape) >= 2 and rank in shape[-2:]:
            return True
    return False


def _category(event, rank: int) -> str:
    names = [event.name.lower()] + [a.name.lower() for a in _ancestors(event)]
    if any("optimizer" in n or "adam" in n or "clip_grad" in n for n in names):
        return "optimizer"
    if any(word in n for n in names for word in _ATTENTION_WORDS):
        return "attention"
    if event.name in _MATMUL_OPS:
        return "lora_matmul" if _is_lora_matmul(event, rank) else "base_matmul"
    return "other_kernels"


_KERNEL_FAMILIES = (  # (family, name starts with, name contains): first match wins
    ("attention", (), ("flash", "fmha", "attention")),  # before gemm: flash kernels' names carry cutlass types
    ("gemm", (), ("nvjet", "gemm", "cutlass", "xmma", "cublas")),
    ("inductor_triton", ("triton_",), ()),  # Inductor's triton_poi_/triton_red_/triton_per_... (Liger's: _triton_)
    ("liger_triton", (), ("rope", "swiglu", "rms_norm", "cross_entropy", "element_mul")),
    ("copy_fill", (), ("memcpy", "memset", "copy_kernel", "fill_kernel")),
    ("aten_elementwise", (), ("elementwise", "vectorized", "reduce_kernel", "unrolled")),
)


def _is_range(name: str) -> bool:
    """A user range on the GPU timeline (torch.compile's "## Call CompiledFxGraph ... ##"): it spans
    kernels that are counted on their own, so counting it too double-counts them."""
    return str(name).startswith("## ")


def kernel_family(name: str) -> str:
    lowered = name.lower()
    for family, prefixes, words in _KERNEL_FAMILIES:
        if lowered.startswith(prefixes) or any(word in lowered for word in words):
            return family
    return "other"


def summarize_profile(events, step_wall_s: float, lora_rank: int) -> dict:
    """Where the profiled window's GPU time goes, as shares of all kernel time (they sum to 1).

    GPU kernel time is attributed to the CPU op that launched it (and that op's ancestors):
    attention, base-model matmuls, LoRA matmuls (a matmul with a dimension equal to the rank),
    optimizer, other kernels (norms, activations, rotary, loss, casts, and kernels the profiler cannot
    link to an aten op, such as torch.compile's generated Triton kernels). `gpu_idle` is the share of
    the window (first kernel start to last kernel end) with no kernel running; `data_loading_host`
    is host time in the data loader over that window. The 2026-12-03 H200 run divided kernel time
    by one step's wall time while the window held more than one step, so its shares summed to 175%;
    hence shares of kernel time and the window measured from the events themselves. Its calls 2-4
    also counted torch.compile's GPU ranges ("## Call CompiledFxGraph") as kernels, which put the
    compiled graphs' time in twice (busy 1.3 s in a 0.78 s window); ranges are left out now.
    `kernel_families`: the same kernel time split by kernel name (cuBLAS GEMMs, flash attention,
    Inductor's and Liger's Triton kernels, copies, ATen elementwise): where "other kernels" goes.
    On CPU (no kernels) each op's self CPU time is used.
    """
    buckets = {"attention": 0.0, "base_matmul": 0.0, "lora_matmul": 0.0, "optimizer": 0.0, "other_kernels": 0.0}
    device_total, kernels, data_us = 0.0, 0, 0.0
    top: dict[str, float] = {}
    cpu_events = [e for e in events if "cpu" in str(getattr(e, "device_type", "")).lower()]
    device_events = [e for e in events if "cuda" in str(getattr(e, "device_type", "")).lower()
                     and not (getattr(e, "is_user_annotation", False) or _is_range(e.name))]
    families: dict[str, float] = {}
    for e in device_events:
        device_total += e.time_range.elapsed_us()
        kernels += 1
        top[e.name[:90]] = top.get(e.name[:90], 0.0) + e.time_range.elapsed_us()
        family = kernel_family(e.name)
        families[family] = families.get(family, 0.0) + e.time_range.elapsed_us()
    attributed = 0.0
    for e in cpu_events:
        name = e.name
        if "DataLoader" in name and "__next__" in name:
            data_us += e.time_range.elapsed_us()
        own = sum(k.duration for k in getattr(e, "kernels", []) or [] if not _is_range(k.name))
        if device_events:
            if own:
                buckets[_category(e, lora_rank)] += own
                attributed += own
        else:  # CPU-only run: each op's own (self) CPU time
            buckets[_category(e, lora_rank)] += e.self_cpu_time_total
    busy = device_total if device_events else sum(buckets.values())
    if device_events and device_total > attributed:  # kernels the profiler could not link to an op
        buckets["other_kernels"] += device_total - attributed
    if device_events:
        window_us = max(e.time_range.end for e in device_events) - min(e.time_range.start for e in device_events)
    else:
        window_us = step_wall_s * 1e6
    total = sum(buckets.values()) or 1.0
    shares = {k: round(v / total, 4) for k, v in buckets.items()}
    return {
        "step_wall_s": round(step_wall_s, 4),
        "window_s": round(window_us / 1e6, 4),
        "gpu_busy_s": round(busy / 1e6, 4),
        "kernels": kernels,
        **{f"share_{k}": v for k, v in shares.items()},
        "share_gpu_idle": round(max(window_us - busy, 0.0) / window_us, 4) if device_events and window_us else None,
        "share_data_loading_host": round(data_us / window_us, 4) if window_us else 0.0,
        "kernel_families": {k: round(v / device_total, 4) for k, v in sorted(families.items(), key=lambda kv: -kv[1])}
        if device_total else {},
        "top_kernels_ms": {k: round(v / 1e3, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]},
    }

