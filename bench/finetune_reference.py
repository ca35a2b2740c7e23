#!/usr/bin/python3
"""llt-finetune's recipe in eager PyTorch, for bench/run_finetune_bench.sh (not a test).

The same model (data_prep/llama_reference.py, Meta's design), the same data (the llt-tokenize
shard folder read with h5py, samples in file order = llt-finetune --shuffle off), the same batch
size and accumulation, LoRA (fp32 A Kaiming-uniform, B zero, scale alpha / r, dropout on the
adapter input) or full fine-tuning, fp32 or bf16 (torch.autocast('cpu', bfloat16); frozen base
stored in --base-dtype), activation checkpointing per block (torch.utils.checkpoint, non-reentrant
so a frozen input still gets gradients), loss = sum of next-token CE over label tokens / label
tokens of the accumulation window (in fp32), the global gradient norm, AdamW (weight decay 0).

Prints one JSON line: per-step seconds, median step time without the first step, losses, peak
RSS for the whole process and for the training phase alone (VmHWM reset after the model is
built, via /proc/self/clear_refs).

  /usr/bin/python3 bench/finetune_reference.py --model assets/models/stories260K/stories260K.bin \
      --data DIR --max-steps 4 --grad-accum 2 --threads 1
  /usr/bin/python3 bench/finetune_reference.py --preset llama2_7b --n-layers 1 --data DIR ...
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data_prep"))
import llama_reference as ref  # noqa: E402

IGNORE = -100
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="llama2.c .bin checkpoint")
    src.add_argument("--preset", choices=["llama2_7b"], help="random weights of this shape")
    p.add_argument("--n-layers", type=int, default=0)
    p.add_argument("--data", required=True, help="llt-tokenize folder (manifest.json + shards)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--base-dtype", choices=["", "fp32", "bf16"], default="")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="wq,wv")
    p.add_argument("--grad-checkpoint", choices=["none", "block"], default="none")
    p.add_argument("--grad-accum", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# ------------------------------------------------------------------------------------------
# Data: the shards as llt's Dataset reads them (input_ids concatenated, offsets, source_lengths).

def read_samples(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    samples = []
    for shard in manifest["shards"]:
        with h5py.File(os.path.join(folder, shard["file"]), "r") as h:
            ids = h["input_ids"][...].astype(np.int64)
            offsets = h["offsets"][...]
            sources = h["source_lengths"][...]
        for i in range(len(sources)):
            samples.append((ids[offsets[i]:offsets[i + 1]], int(sources[i])))
    return samples, manifest["eos_id"]


def collate(samples, pad_id):
    """(input_ids, labels) (B, T): right-padded with pad_id, labels -100 on source and padding."""
    t = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), t), pad_id, dtype=torch.int64)
    labels = torch.full((len(samples), t), IGNORE, dtype=torch.int64)
    for b, (ids, source) in enumerate(samples):
        input_ids[b, :len(ids)] = torch.from_numpy(ids)
        labels[b, source:len(ids)] = torch.from_numpy(ids[source:])
    return input_ids, labels


# ------------------------------------------------------------------------------------------
# Model

class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank, alpha, dropout):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        out_features, in_features = base.weight.shape
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, dtype=torch.float32))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x):
        out = self.base(x)
        h = self.dropout(x.float())
        return out + ((h @ self.lora_a.t()) @ self.lora_b.t() * self.scale).to(out.dtype)


def build_model(a, dtype):
    if a.model:
        args, state_dict = ref.read_llama2c_bin(a.model)
        if a.n_layers:
            args.n_layers = a.n_layers
            state_dict = {k: v for k, v in state_dict.items()
                          if not k.startswith("layers.") or int(k.split(".")[1]) < a.n_layers}
        model = ref.Transformer(args)
        model.load_state_dict(state_dict, strict=True)
        return model.to(dtype)
    # LLaMA-2-7B shape (Meta params.json), random weights built directly in `dtype`.
    args = ref.ModelArgs(n_layers=a.n_layers or 32, max_seq_len=4096)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = ref.Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    return model


def apply_lora(model, a):
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for name in a.lora_targets.split(","):
            owner = layer.attention if name in ("wq", "wk", "wv", "wo") else layer.feed_forward
            setattr(owner, name, LoraLinear(getattr(owner, name), a.lora_rank, a.lora_alpha,
                                            a.lora_dropout))


def forward(model, tokens, checkpointing):
    """The reference Transformer's forward (its own is inference-only), blocks checkpointed."""
    _, t = tokens.shape
    h = model.tok_embeddings(tokens)
    freqs = model.freqs[:t]
    mask = ref.causal_mask(t, 0).type_as(h)
    for layer in model.layers:
        if checkpointing:
            h = torch.utils.checkpoint.checkpoint(layer, h, 0, freqs, mask, use_reentrant=False)
        else:
            h = layer(h, 0, freqs, mask)
    h = model.norm(h)
    weight = model.tok_embeddings.weight if model.output is None else model.output.weight
    return F.linear(h, weight)


def label_token_loss_sum(logits, labels):
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, v), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


# ------------------------------------------------------------------------------------------

def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """VmHWM := current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    lora = a.lora_rank > 0
    base_dtype = DTYPES[a.base_dtype] if (lora and a.base_dtype) else torch.float32
    samples, pad_id = read_samples(a.data)
    model = build_model(a, base_dtype)
    if lora:
        apply_lora(model, a)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    peak_reset = reset_peak_rss()
    checkpointing = a.grad_checkpoint == "block"

    step_s, losses, tokens_total = [], [], 0
    cursor = 0
    for _ in range(a.max_steps):
        started = time.perf_counter()
        window = []
        for _ in range(a.grad_accum):
            batch = [samples[(cursor + i) % len(samples)] for i in range(a.batch_size)]
            cursor += a.batch_size
            window.append(collate(batch, pad_id))
        label_tokens = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels in window)
        loss_sum = 0.0
        for input_ids, labels in window:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                logits = forward(model, input_ids, checkpointing)
            total = label_token_loss_sum(logits, labels)
            (total / label_tokens).backward()
            loss_sum += float(total)
            tokens_total += int(input_ids.numel())
        grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params])))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - started)
        losses.append(loss_sum / label_tokens)
        print(f"step {len(step_s)} loss {losses[-1]:.4f} grad_norm {grad_norm:.4g} "
              f"{step_s[-1]:.3f} s", file=sys.stderr)

    record = {
        "impl": "pytorch",
        "model": a.model or f"preset:{a.preset}",
        "n_layers": a.n_layers,
        "precision": a.precision,
        "base_dtype": a.base_dtype if lora else "",
        "lora_rank": a.lora_rank,
        "grad_checkpoint": a.grad_checkpoint,
        "threads": a.threads,
        "grad_accum": a.grad_accum,
        "batch_size": a.batch_size,
        "steps": len(step_s),
        "step_s": step_s,
        "median_step_s": statistics.median(step_s[1:] if len(step_s) > 1 else step_s),
        "losses": losses,
        "trainable_parameters": sum(p.numel() for p in params),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_training": rss_kib("VmHWM") * 1024 if peak_reset else None,
        "torch_version": torch.__version__,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
