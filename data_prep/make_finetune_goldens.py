#!/usr/bin/python3
"""Goldens for tests/test_finetune_reference.cpp: one training step's loss and gradients of the
shipped stories260K model, computed by the independent PyTorch reference
(data_prep/llama_reference.py) with LoRA written here in Python.

Writes tests/assets/finetune/step.pt (torch.save zip, read in C++ with torch::jit::pickle_load)
and tests/assets/finetune/step.json (what was measured). The .pt holds one dict:
  "format"        "llt-finetune-golden-v1"
  "input_ids"     int64 (B, T): 2 Alpaca samples, right-padded with EOS
  "labels"        int64 (B, T): input_ids, -100 on the prompt (source) and on padding
  "label_tokens"  int: labels != -100 (the loss's denominator)
  "cases"         {name: {"targets": "wq,wv" ("" = full fine-tuning), "rank": int,
                   "alpha": float, "loss": float, "adapter": {llt name: fp32 tensor},
                   "grads": {llt name: fp32 tensor}}}
Names are llt's: "layers.0.attention.wq.lora_a" (r, in), "...lora_b" (out, r), and Meta's
parameter names for full fine-tuning (tied model: "tok_embeddings.weight" holds the classifier's
gradient too; there is no "output.weight").

The recipe (DESIGN.md "Training numerics"; stanford_alpaca train.py): each sample is
BOS + tokens(prompt + output) + EOS with the prompt template of stanford_alpaca, labels -100 on
BOS + tokens(prompt); loss = sum over label tokens of the next-token cross-entropy (logits at t
predict labels at t + 1) / number of label tokens, in fp32. LoRA: y = x W^T + (alpha / r) *
dropout(x) A^T B^T with dropout 0; A and B both seeded random (B non-zero, so both get
non-trivial gradients).

Run: /usr/bin/python3 data_prep/make_finetune_goldens.py [OUTPUT_DIR]
"""

import contextlib
import json
import math
import os
import sys

import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "assets/models/stories260K/stories260K.bin")
TOKENIZER = os.path.join(ROOT, "assets/models/stories260K/tok512.model")
ALPACA = os.path.join(ROOT, "assets/data/alpaca/alpaca_data_first_5000.json")
RECORDS = [1, 5]  # no-input and with-input templates; 147 and 176 tokens with tok512
IGNORE = -100
RANK, ALPHA = 4, 8.0
CASES = {  # name -> LoRA targets ([] = full fine-tuning)
    "lora_wq_wv": ["wq", "wv"],
    "lora_wq_wk_wv_wo_w1": ["wq", "wk", "wv", "wo", "w1"],
    "full": [],
}

# stanford_alpaca train.py PROMPT_DICT, verbatim.
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def make_batch():
    """(input_ids, labels) (B, T) int64 for RECORDS, right-padded with EOS (labels -100 there)."""
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    with open(ALPACA) as f:
        records = json.load(f)
    samples = []
    for i in RECORDS:
        r = records[i]
        source = (PROMPT_INPUT if r.get("input", "") != "" else PROMPT_NO_INPUT).format_map(r)
        ids = [sp.bos_id()] + sp.encode(source + r["output"]) + [sp.eos_id()]
        source_len = 1 + len(sp.encode(source))
        samples.append((ids, source_len))
    t = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), t), sp.eos_id(), dtype=torch.int64)
    labels = torch.full((len(samples), t), IGNORE, dtype=torch.int64)
    for b, (ids, source_len) in enumerate(samples):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, source_len:len(ids)] = torch.tensor(ids[source_len:])
    return input_ids, labels


class LoraLinear(nn.Module):
    """base(x) + (alpha / r) * dropout(x) A^T B^T; the base weight is frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(a.clone())  # (r, in)
        self.lora_b = nn.Parameter(b.clone())  # (out, r)

    def forward(self, x):
        h = F.dropout(x, p=0.0, training=self.training)
        return self.base(x) + (h @ self.lora_a.t()) @ self.lora_b.t() * self.scale


def module_path(name: str) -> str:
    return ("attention." if name in ("wq", "wk", "wv", "wo") else "feed_forward.") + name


def make_adapter(args: ref.ModelArgs, targets, seed: int) -> dict:
    """Seeded A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's bound) and B ~ normal(0, 0.05), by llt name."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"wq": (args.dim, args.dim), "wk": (args.kv_heads() * args.head_dim(), args.dim),
              "wv": (args.kv_heads() * args.head_dim(), args.dim), "wo": (args.dim, args.dim),
              "w1": (args.ffn_hidden(), args.dim), "w2": (args.dim, args.ffn_hidden()),
              "w3": (args.ffn_hidden(), args.dim)}
    adapter = {}
    for layer in range(args.n_layers):
        for name in targets:
            out, inp = shapes[name]
            prefix = f"layers.{layer}.{module_path(name)}"
            bound = 1.0 / math.sqrt(inp)
            adapter[prefix + ".lora_a"] = (torch.rand(RANK, inp, generator=gen) * 2 - 1) * bound
            adapter[prefix + ".lora_b"] = 0.05 * torch.randn(out, RANK, generator=gen)
    return adapter


def forward(model: ref.Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Transformer.forward of the reference without its inference_mode (training needs grads)."""
    _, t = tokens.shape
    h = model.tok_embeddings(tokens)
    freqs = model.freqs[:t]
    mask = ref.causal_mask(t, 0).type_as(h)
    for layer in model.layers:
        h = layer(h, 0, freqs, mask)
    h = model.norm(h)
    weight = model.tok_embeddings.weight if model.output is None else model.output.weight
    return F.linear(h, weight)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token CE over label tokens / label tokens (at least fp32)."""
    v = logits.shape[-1]
    logits = logits[:, :-1].reshape(-1, v)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    targets = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    return total / (targets != IGNORE).sum()


@contextlib.contextmanager
def wide_precision():
    """The reference upcasts RMSNorm and RoPE to fp32 (Meta's code); for the fp64 run that
    measures the reference's own fp32 error, keep fp64 there instead."""
    norm_forward, rotate = ref.RMSNorm.forward, ref.rotate

    def rms_norm64(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def rotate64(x, freqs):
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs.to(xc.dtype)[None, :, None, :]).flatten(3)

    ref.RMSNorm.forward, ref.rotate = rms_norm64, rotate64
    try:
        yield
    finally:
        ref.RMSNorm.forward, ref.rotate = norm_forward, rotate


def run_case(args, state_dict, tokens, labels, targets, adapter, dtype):
    """(loss, {llt name: gradient}) of one step in `dtype`."""
    model = ref.Transformer(args)
    model.load_state_dict(state_dict, strict=True)
    model = model.to(dtype).train()
    if targets:
        for p in model.parameters():
            p.requires_grad_(False)
        for layer_index, layer in enumerate(model.layers):
            for name in targets:
                owner = layer.attention if name in ("wq", "wk", "wv", "wo") else layer.feed_forward
                prefix = f"layers.{layer_index}.{module_path(name)}"
                setattr(owner, name, LoraLinear(getattr(owner, name), RANK, ALPHA,
                                                adapter[prefix + ".lora_a"].to(dtype),
                                                adapter[prefix + ".lora_b"].to(dtype)))
    loss = loss_fn(forward(model, tokens), labels)
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name.replace(".base.", ".")] = p.grad.detach().clone()
    return float(loss), grads


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/assets/finetune")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # reproducible reduction order
    args, state_dict = ref.read_llama2c_bin(MODEL)
    tokens, labels = make_batch()
    label_tokens = int((labels[:, 1:] != IGNORE).sum())
    cases, measured = {}, {}
    for i, (name, targets) in enumerate(CASES.items()):
        adapter = make_adapter(args, targets, seed=100 + i)
        loss, grads = run_case(args, state_dict, tokens, labels, targets, adapter, torch.float32)
        with wide_precision():
            loss64, grads64 = run_case(args, state_dict, tokens, labels, targets, adapter,
                                       torch.float64)
        cases[name] = {"targets": ",".join(targets), "rank": RANK, "alpha": ALPHA, "loss": loss,
                       "adapter": adapter, "grads": {k: v.float() for k, v in grads.items()}}
        measured[name] = {
            "loss": loss,
            "loss_fp32_vs_fp64_rel": abs(loss - loss64) / abs(loss64),
            "grad_fp32_vs_fp64_rel_max": max(rel_diff(grads[k], grads64[k]) for k in grads),
            "grad_abs_max": max(float(g.abs().max()) for g in grads.values()),
            "tensors": len(grads),
        }
        print(name, json.dumps(measured[name]), file=sys.stderr)
    blob = {"format": "llt-finetune-golden-v1", "input_ids": tokens, "labels": labels,
            "label_tokens": label_tokens, "cases": cases}
    torch.save(blob, os.path.join(out_dir, "step.pt"))
    meta = {"format": "llt-finetune-golden-v1", "model": "assets/models/stories260K/stories260K.bin",
            "alpaca_records": RECORDS, "batch_shape": list(tokens.shape),
            "label_tokens": label_tokens, "rank": RANK, "alpha": ALPHA,
            "cases": {k: v for k, v in CASES.items()}, "measured": measured,
            "torch_version": torch.__version__}
    with open(os.path.join(out_dir, "step.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
