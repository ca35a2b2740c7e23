#!/usr/bin/python3
"""The Python side of bench/run_generate_bench.sh: the same model and greedy decoding as
bench_generate (llt), in eager PyTorch (Debian python3-torch), same threads, same prompt ids.
Uses the independent reference model of data_prep/llama_reference.py. Prints one JSON line per
configuration, in bench_generate's schema."""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data_prep"))
import llama_reference as ref  # noqa: E402

PRESETS = {
    "llama2_7b": ref.ModelArgs(dim=4096, n_heads=32, vocab_size=32000, multiple_of=256,
                               max_seq_len=4096),
}


def make_model(args):
    if args.model:
        margs, sd = ref.read_llama2c_bin(args.model)
        model = ref.build_model(margs, sd)
    else:
        margs = PRESETS[args.preset]
        margs.n_layers = args.n_layers
        model = ref.Transformer(margs)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
        model.eval()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    return model.to(dtype)


@torch.inference_mode()
def generate(model, prompts, max_new, kv_cache):
    """Greedy, Meta-style batch loop (the same loop as llt's generate)."""
    b, n = prompts.shape
    total = n + max_new
    tokens = torch.zeros(b, total, dtype=torch.long)
    tokens[:, :n] = prompts
    if kv_cache:
        model.start_cache(b, total)
    prev = 0
    for cur in range(n, total):
        if kv_cache:
            logits = model(tokens[:, prev:cur], start_pos=prev)[:, -1]
        else:
            logits = model(tokens[:, :cur])[:, -1]
        tokens[:, cur] = logits.float().argmax(-1)
        prev = cur
    if kv_cache:
        model.stop_cache()
    return tokens[:, n:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--preset", default="llama2_7b")
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--kv-cache", action="append", default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = make_model(args)
    prompt = [1] + [100 + 7 * i % 300 for i in range(1, args.prompt_len)]
    prompts = torch.tensor([prompt] * args.batch)
    for kv in args.kv_cache or ["on", "off"]:
        generate(model, prompts, 4, kv == "on")  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = generate(model, prompts, args.max_new_tokens, kv == "on")
            best = min(best, time.perf_counter() - t0)
        name = args.model or f"{args.preset}-{args.n_layers}L-random"
        print(json.dumps({"impl": "pytorch", "model": name, "dtype": args.dtype, "kv_cache": kv,
                          "threads": args.threads, "batch": args.batch,
                          "prompt_len": args.prompt_len, "new_tokens": out.numel(),
                          "seconds": best, "tokens_per_s": out.numel() / best}), flush=True)


if __name__ == "__main__":
    main()
