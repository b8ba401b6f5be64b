"""LoRA training side by side: medtune vs Unsloth vs plain TRL vs the seed recipe, one GPU, one run.

The workload is the same for every system: one Llama-shaped base with random weights, created
once with a fixed seed and saved (`make-base`), loaded by every arm; LoRA on q/k/v/o (r=8,
alpha=16, dropout 0.05, the seed's adapter) or all linear layers (r=16, alpha=32); bf16; the
lognormal length mix of ../shared/bench (median 450, clipped 64..2048, 2,048 examples, the same
token ids for every system); the same token budget (optimizer steps of 4 micro-batches x 16,384
tokens, lr 2e-4 cosine, fused AdamW, seed 0). Each system packs the data its own way.

  medtune  medtune's trainer code path (plan_training / prepare_lora_model / build_trainer) at its
           shipped GPU defaults: packed padding-free micro-batches, FlashAttention-4 where installed on sm90/sm100 (else torch varlen flash attention),
           regional torch.compile, Liger kernels when installed, fused AdamW.
  unsloth  Unsloth FastLanguageModel + get_peft_model + TRL SFTTrainer (patched by Unsloth), its
           packing (padding-free BFD rows of 16,384 tokens), no gradient checkpointing (fastest
           when memory allows; the H200 has room), its own kernels.
  trl      plain TRL SFTTrainer + PEFT, padding-free BFD packing, sdpa attention (flash-attn is not
           on the device image), fused AdamW.
  seed     the seed script: HF Trainer, fp16 weights + fp16=True, Adafactor, pad/truncate 512,
           4 x 4; it trains as many steps as it takes to see the same real-token budget.

Every row: real (non-pad, untruncated) tokens/s over the timed steps, MFU = 4 * N FLOPs per real
token / 790 TFLOP/s, peak GPU memory (max allocated, weights included), the loss on 24 held-out
examples after training (the same function for every system: so no system wins by computing
less), real tokens trained.

From the repository root (a package: workload.py, systems.py, profiler.py, table.py):
  python -m benchmarks.peers make-base --shape 1b --dir /tmp/peers/base-1b
  python -m benchmarks.peers run --system medtune --base /tmp/peers/base-1b --out rows.jsonl
  python -m benchmarks.peers run --system medtune --shape 8b --quantize nf4 --set gradient_checkpointing=true ...
  python -m benchmarks.peers table rows.jsonl --append    # + every recorded call; --append records this one
  ... --tiny: a tiny model on CPU (plumbing check; the unsloth arm needs a GPU)
Results: benchmarks/results/train_vs_peers.json (medtune.benchmarking's schema, one run per device
call, rows tagged with the call). See benchmarks/train_vs_peers.sh for the time-boxed device driver.
"""
