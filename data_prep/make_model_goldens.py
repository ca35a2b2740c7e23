#!/usr/bin/python3
"""Logit goldens for tests/test_model.cpp, from data_prep/llama_reference.py.

For each tiny config below it writes tests/assets/model/<name>.pt (torch.save zip, read in C++
with torch::pickle_load) and tests/assets/model/<name>.json (the model args plus measurements).
The .pt holds one dict:
  "format"              "llt-model-golden-v1"
  "state_dict"          {Meta parameter name: fp32 tensor} (no output.weight when tied)
  "tokens"              int64 (B, T) = (2, 12)
  "logits"              fp32 (B, T, V): reference, fp32, whole sequence, no cache
  "logits_bf16"         fp32 (B, T, V): the same reference run in bf16 (weights cast to bf16
                        with round-to-nearest-even; activations bf16; RMSNorm, RoPE and softmax
                        in fp32 inside, as Meta's code does), cast to fp32 at the end
  "logits_bf16_weights" fp32 (B, T, V): fp32 compute from the bf16-rounded weights (the part of
                        the bf16 error that comes from the weights alone)
  "kv_prefill"          int, 5
  "kv_logits"           fp32 (B, T, V): reference's cached path in fp32: positions [0, 5) in
                        one call, then one position per call
Weights are random (seeded), scaled so activations and logits are O(1): normal(0, 1) embeddings,
normal(0, 1/sqrt(fan_in)) matrices, 1 + normal(0, 0.1) norm weights.
"""

import json
import os
import sys
from dataclasses import asdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import ModelArgs, Transformer  # noqa: E402

BATCH, SEQ, PREFILL = 2, 12, 5

CONFIGS = {
    # GQA (2 query heads per kv head), Meta's rule: F = 32 * ceil(int(2 * 256 / 3) / 32) = 192.
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=96, multiple_of=32,
                     max_seq_len=64),
    # n_kv_heads omitted (= n_heads), ffn_dim_multiplier: F = 16 * ceil(int(1.3 * 128) / 16)
    # = 176, non-default norm_eps and rope_theta.
    "ffn_mult": ModelArgs(dim=48, n_layers=2, n_heads=4, n_kv_heads=None, vocab_size=80,
                          multiple_of=16, ffn_dim_multiplier=1.3, norm_eps=1e-6,
                          rope_theta=500000.0, max_seq_len=64),
    # llama2.c style: explicit hidden_dim, one kv head (MQA), classifier tied to the embedding.
    "tied": ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=64,
                      hidden_dim=72, tie_embeddings=True, max_seq_len=64),
}


def random_state_dict(model: Transformer, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name == "tok_embeddings.weight":
            t = torch.randn(p.shape, generator=gen)
        else:
            t = torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5
        sd[name] = t.float().contiguous()
    return sd


def make_model(args: ModelArgs, sd: dict, dtype) -> Transformer:
    model = Transformer(args)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval()


def cached_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    model.start_cache(tokens.shape[0], tokens.shape[1])
    parts = [model(tokens[:, :PREFILL], start_pos=0)]
    for pos in range(PREFILL, tokens.shape[1]):
        parts.append(model(tokens[:, pos:pos + 1], start_pos=pos))
    model.stop_cache()
    return torch.cat(parts, dim=1)


def max_abs(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def make_golden(name: str, args: ModelArgs, seed: int, out_dir: str):
    sd = random_state_dict(Transformer(args), seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    tokens = torch.randint(0, args.vocab_size, (BATCH, SEQ), generator=gen, dtype=torch.int64)

    fp32 = make_model(args, sd, torch.float32)
    logits = fp32(tokens)
    kv_logits = cached_logits(fp32, tokens)
    logits_fp64 = make_model(args, sd, torch.float64)(tokens).double()
    logits_bf16 = make_model(args, sd, torch.bfloat16)(tokens)
    bf16_rounded = {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    logits_bf16_weights = make_model(args, bf16_rounded, torch.float32)(tokens)

    blob = {"format": "llt-model-golden-v1", "state_dict": sd, "tokens": tokens,
            "logits": logits, "logits_bf16": logits_bf16, "logits_bf16_weights":
            logits_bf16_weights, "kv_prefill": PREFILL, "kv_logits": kv_logits}
    torch.save(blob, os.path.join(out_dir, name + ".pt"))

    meta = {
        "format": "llt-model-golden-v1",
        "args": asdict(args),
        "ffn_hidden": args.ffn_hidden(),
        "seed": seed,
        "tensors": sorted(sd.keys()),
        "measured": {  # max |a - b| over all logits, from this script's run
            "logit_max_abs": float(logits.abs().max()),
            "logit_std": float(logits.std()),
            "fp32_vs_fp64": max_abs(logits, logits_fp64),
            "kv_vs_full_fp32": max_abs(kv_logits, logits),
            "bf16_vs_fp32": max_abs(logits_bf16, logits),
            "bf16_weights_vs_fp32": max_abs(logits_bf16_weights, logits),
            "bf16_vs_bf16_weights": max_abs(logits_bf16, logits_bf16_weights),
        },
    }
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(name, json.dumps(meta["measured"]), file=sys.stderr)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/assets/model"
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # reproducible reduction order
    for i, (name, args) in enumerate(CONFIGS.items()):
        make_golden(name, args, seed=1234 + i, out_dir=out_dir)


if __name__ == "__main__":
    main()
