#!/usr/bin/env python3
"""Packed (varlen) causal attention kernels on one GPU: FlashAttention-2 vs -4 vs FlexAttention vs cuDNN, fwd+bwd.

The micro-batches are the training workload's (benchmarks/peers): examples of the
lognormal length mix packed into 16,384-token rows, every example attending only to itself. For
each Llama head shape (1B: 32 q / 8 kv heads of 64; 3B: 24 / 8 of 128; 8B: 32 / 8 of 128) and each
kernel it times forward + backward over the same micro-batches (wall clock between CUDA syncs,
after warm-up) and checks the output and the q/k/v gradients against an fp32 per-example SDPA
reference (medtune's CPU fallback, `reference_varlen_attention`), so no kernel
wins by computing something else. Wall time includes each call's host-side launch cost (a training
step hides it behind queued GPU work); `gpu ms` is the sum of the CUDA kernels' own durations in
one profiled pass (torch.profiler), so the two columns apart show whether a kernel is host-bound here.

  flash       torch.nn.attention.varlen.varlen_attn (FlashAttention-2 in torch; medtune's varlen kernel)
  fa4         FlashAttention-4 (flash-attn-4's flash_attn.cute.flash_attn_varlen_func) as medtune trains
              with it: the torch.library op medtune::fa4_varlen, native GQA (k/v at their own heads)
  fa4-direct  the same FA4 function called directly with its own autograd (no torch.library op): the
              op's cost is the difference
  cudnn       aten._cudnn_attention_forward with cumulative sequence lengths (ragged THD layout),
              k/v repeated to the query heads
  cudnn-gqa   the same with k/v at their own head count (cuDNN's native GQA)
  flex        FlexAttention (torch.compile'd Triton) with a document-causal block mask, native GQA

  python benchmarks/attention_kernels.py --kernels flash,fa4,flex,cudnn   # appends to results/attention_kernels.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from medtune.benchmarking import append_run, command_line
from medtune.config import TrainConfig
from medtune.train.attention import packed_kernel, reference_varlen_attention
from medtune.train.measure import example_lengths

TOKENS_PER_MICRO_BATCH = TrainConfig().max_tokens_per_batch  # the shipped micro-batch

HEAD_SHAPES = {"1b": (32, 8, 64), "3b": (24, 8, 128), "8b": (32, 8, 128)}


def packed_rows(n_rows: int, budget: int, seed: int) -> list[list[int]]:
    """Example lengths of n_rows packed rows, each filled first-fit up to budget tokens."""
    pool = [int(x) for x in example_lengths(4096, seed)]
    rows, row, used = [], [], 0
    for length in pool:
        if used + length > budget:
            rows.append(row)
            if len(rows) == n_rows:
                break
            row, used = [], 0
        row.append(length)
        used += length
    return rows


def repeat_kv(q, k, v):
    """k and v repeated to the query head count (GQA without kernel support)."""
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def flash_kernel():
    from torch.nn.attention.varlen import varlen_attn

    def run(q, k, v, cu, max_len, scale):
        k, v = repeat_kv(q, k, v)
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, window_size=(-1, 0))

    return run


def fa4_direct_kernel():
    import flash_attn.cute  # flash-attn-4: only on the GPU machine

    def run(q, k, v, cu, max_len, scale):
        return flash_attn.cute.flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len, max_seqlen_k=max_len,
            softmax_scale=scale, causal=True,
        )[0]

    return run


def cudnn_kernel(native_gqa: bool):
    def run(q, k, v, cu, max_len, scale):
        if not native_gqa:
            k, v = repeat_kv(q, k, v)
        out = torch.ops.aten._cudnn_attention_forward(
            q, k, v, None, cu, cu, max_len, max_len, True, 0.0, True, False, scale=scale
        )
        return out[0]

    return run


def flex_kernel():
    """torch's FlexAttention (compiled Triton) with a document-causal block mask, cached per batch."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # one graph per (micro-batch length, grad mode): room for every batch of the run
    torch._dynamo.config.recompile_limit = 64
    compiled = torch.compile(flex_attention, dynamic=False)
    masks: dict[int, object] = {}

    def run(q, k, v, cu, max_len, scale):
        total = q.shape[0]
        key = cu.data_ptr()
        if key not in masks:  # in training one mask per micro-batch, shared by every layer
            doc = torch.searchsorted(cu[1:], torch.arange(total, device=q.device), right=True)

            def document_causal(b, h, q_idx, kv_idx):
                return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

            masks[key] = create_block_mask(document_causal, None, None, total, total, device=q.device)
        out = compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                       block_mask=masks[key], scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        return out[0].transpose(0, 1)

    return run


def batch_tensors(row: list[int], heads: int, kv_heads: int, dim: int, seed: int, device):
    gen = torch.Generator(device=device).manual_seed(seed)
    total = sum(row)
    q = torch.randn(total, heads, dim, device=device, generator=gen, dtype=torch.bfloat16)
    k = torch.randn(total, kv_heads, dim, device=device, generator=gen, dtype=torch.bfloat16)
    v = torch.randn(total, kv_heads, dim, device=device, generator=gen, dtype=torch.bfloat16)
    grad = torch.randn(total, heads, dim, device=device, generator=gen, dtype=torch.bfloat16)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(row)]), device=device, dtype=torch.int32)
    return q, k, v, grad, cu, max(row)


def fwd_bwd(kernel, q, k, v, grad, cu, max_len, scale):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = kernel(q, k, v, cu, max_len, scale)
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


def attention_flops(row: list[int], heads: int, dim: int) -> float:
    """Causal fwd+bwd FLOPs: 4 * L^2/2 * D * H forward, 2.5x that backward."""
    return sum(3.5 * 4 * (n * n / 2) * dim * heads for n in row)


def per_batch_ms(step, batches, iters: int) -> float:
    """Mean ms of step(tensors) per micro-batch over iters passes, after the caller's warm-up."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        for tensors, _ref in batches:
            step(*tensors)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (iters * len(batches)) * 1e3


def gpu_kernel_ms(step, batches) -> float:
    """Mean ms per micro-batch of CUDA kernel time alone (no host launch cost) over one profiled pass."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for tensors, _ref in batches:
            step(*tensors)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / len(batches)


def measure(name, kernel, batches, scale, heads, dim, iters: int) -> dict:
    row = {"kernel": name}
    try:
        errors = {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
        for (q, k, v, grad, cu, max_len), ref in batches:
            got = fwd_bwd(kernel, q, k, v, grad, cu, max_len, scale)
            for key, a, b in zip(errors, got, ref):
                errors[key] = max(errors[key], float((a.float() - b).abs().max()))
        row["max_abs_error_vs_fp32"] = errors
        def train_step(q, k, v, grad, cu, max_len):
            fwd_bwd(kernel, q, k, v, grad, cu, max_len, scale)

        # forward only: inputs that need no grad (not no_grad(), which sends compiled flex back to eager)
        def forward(q, k, v, grad, cu, max_len):
            kernel(q, k, v, cu, max_len, scale)

        per_batch_ms(train_step, batches, 3)  # warm-up (graph builds, autotuning)
        train_ms = per_batch_ms(train_step, batches, iters)
        per_batch_ms(forward, batches, 1)
        row["forward_ms_per_micro_batch"] = round(per_batch_ms(forward, batches, iters), 3)
        flops = sum(attention_flops(b[0][-2].diff().tolist(), heads, dim) for b in batches) / len(batches)
        row.update(ms_per_micro_batch=round(train_ms, 3), tflops=round(flops / train_ms / 1e9, 1))
        try:
            row["gpu_kernel_ms_per_micro_batch"] = round(gpu_kernel_ms(train_step, batches), 3)
        except Exception as error:  # the profiler is a second opinion; keep the wall-clock row without it
            row["gpu_kernel_ms_error"] = f"{type(error).__name__}: {str(error)[:200]}"
    except Exception as error:  # a kernel that cannot run here is a row, not a crash
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return row


def make_kernels(names: list[str]) -> dict:
    factories = {"flash": flash_kernel, "fa4": lambda: packed_kernel("fa4"), "fa4-direct": fa4_direct_kernel,
                 "flex": flex_kernel,
                 "cudnn": lambda: cudnn_kernel(False),
                 "cudnn-gqa": lambda: cudnn_kernel(True)}  # cudnn-gqa: illegal memory access in the first call
    return {name: factories[name]() for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4, help="packed micro-batches per shape")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--shapes", default="1b,3b,8b")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    parser.add_argument("--gqa", action="store_true", help="also try cuDNN with native GQA (last: it may crash)")
    parser.add_argument("--kernels", default="flash,flex,cudnn")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = packed_rows(args.rows, TOKENS_PER_MICRO_BATCH, seed=0)
    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d"),
        "examples_per_micro_batch": [len(r) for r in rows],
        "tokens_per_micro_batch": [sum(r) for r in rows],
        "command": command_line(),
    }
    names = args.kernels.split(",") + (["cudnn-gqa"] if args.gqa else [])
    results = []
    print(f"{env['gpu']} torch {env['torch']} cuDNN {env['cudnn']}; rows {env['examples_per_micro_batch']}")
    print(f"{'shape':5} {'kernel':10} {'ms/mb':>8} {'gpu ms':>8} {'fwd ms':>8} {'TFLOP/s':>8} {'vs flash':>8}  max |err| out/dq/dk/dv")
    for shape in args.shapes.split(","):
        heads, kv_heads, dim = HEAD_SHAPES[shape]
        scale = dim**-0.5
        batches = []
        for i, row in enumerate(rows):
            tensors = batch_tensors(row, heads, kv_heads, dim, seed=i, device=device)
            q, k, v, grad, cu, max_len = tensors
            qf, kf, vf = (t.float().requires_grad_(True) for t in (q, k, v))
            out = reference_varlen_attention(qf, kf, vf, cu, max_len, scale)
            out.backward(grad.float())
            batches.append((tensors, (out.detach(), qf.grad, kf.grad, vf.grad)))
        base_ms = None
        for name, kernel in make_kernels(names).items():  # fresh per shape: flex caches block masks
            result = {"shape": shape, **measure(name, kernel, batches, scale, heads, dim, args.iters)}
            results.append(result)
            if "error" in result:
                print(f"{shape:5} {name:10} failed: {result['error']}")
                continue
            base_ms = base_ms or (result["ms_per_micro_batch"] if name == "flash" else None)
            ratio = base_ms / result["ms_per_micro_batch"] if base_ms else float("nan")
            result["speedup_vs_flash"] = round(ratio, 3)
            err = result["max_abs_error_vs_fp32"]
            print(f"{shape:5} {name:10} {result['ms_per_micro_batch']:8.3f} {result.get('gpu_kernel_ms_per_micro_batch', float('nan')):8.3f} {result['forward_ms_per_micro_batch']:8.3f} {result['tflops']:8.1f} {ratio:7.2f}x  "
                  + "/".join(f"{err[key]:.4f}" for key in ("out", "dq", "dk", "dv")))
        del batches
        torch.cuda.empty_cache()
    append_run("attention_kernels", results, results_dir=args.results_dir, environment=env)


if __name__ == "__main__":
    main()
