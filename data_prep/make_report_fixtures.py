#!/usr/bin/python3
"""Writes tests/assets/report/runs/: small run folders for llt-report's tests (tests/test_report.cpp).

Hand-chosen numbers, not measured: ten llt-finetune-shaped run folders (summary.json with every
field lib/llt/tools/run_folder's RunSummary writes, metrics.jsonl, memory.jsonl) covering the seed's
Table 2 grid (8 cells with grad_checkpoint none, one of them status oom; 2 cells with block), and
llt-generate / llt-perplexity outputs in `base/` (an evaluation of the base model: no
summary.json) and in the fine-tuned `none-ga1-mp1-lora1/`.

The numbers are round in MiB (2^20 bytes) so the expected tables in test_report.cpp can be
checked by hand; the README beside the fixtures lists them. Run from the repository root:
    /usr/bin/python3 data_prep/make_report_fixtures.py
"""

import json
import math
import os
import shutil

MIB = 1024 * 1024
ROOT = os.path.join("tests", "assets", "report", "runs")
ADAPTER_BYTES = 209715  # 0.2 MiB: LoRA's extra parameters (and its gradients)

# (grad_checkpoint, grad_accum on, mixed precision on, lora on): status, peak bytes, runtime_s
CELLS = {
    ("none", 0, 0, 0): ("oom", 1000 * MIB, 3.2),
    ("none", 0, 0, 1): ("ok", 300 * MIB, 50.0),
    ("none", 0, 1, 0): ("ok", 500 * MIB, 80.0),
    ("none", 0, 1, 1): ("ok", 250 * MIB, 40.0),
    ("none", 1, 0, 0): ("ok", 700 * MIB, 90.0),
    ("none", 1, 0, 1): ("ok", 280 * MIB, 48.0),
    ("none", 1, 1, 0): ("ok", 480 * MIB, 75.0),
    ("none", 1, 1, 1): ("ok", 241591910, 38.26),  # 230.39999 MiB: shows as 230.4
    ("block", 0, 0, 0): ("ok", 600 * MIB, 120.0),
    ("block", 1, 0, 1): ("ok", 200 * MIB, 64.0),
}


def breakdown(ckpt, mp, lora):
    """Parameters, gradients, optimizer state (AdamW: 2x the trainable bytes), activations."""
    parameters = 4 * MIB + (ADAPTER_BYTES if lora else 0)
    gradients = ADAPTER_BYTES if lora else 4 * MIB
    activations = (80 if lora else 100) * MIB
    if mp:
        activations //= 2  # bf16 activations
    if ckpt != "none":
        activations //= 4  # only block inputs kept
    return {"activations": activations, "gradients": gradients,
            "optimizer_state": 2 * gradients, "parameters": parameters}


def name(ckpt, ga, mp, lora):
    return f"{ckpt}-ga{ga}-mp{mp}-lora{lora}"


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")


def write_run(ckpt, ga, mp, lora, status, peak, runtime):
    folder = os.path.join(ROOT, name(ckpt, ga, mp, lora))
    os.makedirs(folder)
    grad_accum = 8 if ga else 1
    steps = 0 if status == "oom" else 16 // grad_accum
    samples = 0 if status == "oom" else 16
    b = breakdown(ckpt, mp, lora)
    summary = {
        "status": status,
        "error": "host memory cap: allocating 3235968 bytes would exceed the cap" if status == "oom" else "",
        "steps": steps, "samples": samples, "tokens": samples * 300, "label_tokens": samples * 150,
        "runtime_s": runtime,
        "samples_per_s": samples / runtime, "tokens_per_s": samples * 300 / runtime,
        "trainable_parameters": (ADAPTER_BYTES if lora else 4 * MIB) // 4,
        "total_parameters": b["parameters"] // 4,
        "device": "cpu", "precision": "bf16" if mp else "fp32",
        "grad_accum": grad_accum, "batch_size": 1, "lora_rank": 16 if lora else 0,
        "grad_checkpoint": ckpt, "base_dtype": "fp32", "dim": 64,
        "peak_allocated": peak + MIB, "peak_reserved": peak + MIB,
        "peak_allocated_training": peak, "peak_rss": peak + 300 * MIB, "skipped_steps": 0,
        "memory_breakdown": b,
        "memory_estimate": dict(b, total=sum(b.values())),
        "model": "assets/models/stories260K/stories260K.bin", "data": "/tmp/data", "n_layers": 5,
        "command_line": f"llt-finetune --lora-targets wq,wv --grad-checkpoint {ckpt}",
        "git_sha": "fedcba987654" if ckpt == "block" else "abc123def456",
        "llt_version": "0.1.0",
    }
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    write_jsonl(os.path.join(folder, "metrics.jsonl"), [
        {"step": s, "loss": round(4.0 - 0.1 * s - 0.2 * lora - 0.05 * mp, 4), "lr": 1e-5,
         "grad_norm": 1.0, "tokens": 300 * grad_accum, "label_tokens": 150 * grad_accum,
         "tokens_per_s": 1000.0, "elapsed_s": runtime * s / max(steps, 1)}
        for s in range(1, steps + 1)])
    write_jsonl(os.path.join(folder, "memory.jsonl"), [
        {"step": 0, "phase": "after_load", "t": 0.0, "device": "cpu", "allocated": 4 * MIB,
         "reserved": 4 * MIB, "peak_allocated": 4 * MIB, "peak_reserved": 4 * MIB,
         "rss": 200 * MIB, "peak_rss": 200 * MIB}] + [
        {"step": s, "phase": "step", "t": runtime * s / max(steps, 1), "device": "cpu",
         "allocated": 6 * MIB, "reserved": 6 * MIB, "peak_allocated": peak,
         "peak_reserved": peak, "rss": peak + 300 * MIB, "peak_rss": peak + 300 * MIB}
        for s in range(1, steps + 1)])


def generation(prompt, completion):
    return {"prompt": prompt, "completion": completion, "prompt_ids": [1, 2], "ids": [3, 4],
            "stopped": True, "tokens_per_s": 100.0, "kv_cache": True, "dtype": "fp32",
            "device": "cpu"}


def perplexity(mean_nll):
    return {"mean_nll": mean_nll, "perplexity": math.exp(mean_nll), "tokens": 1000,
            "samples": 10, "over": "labels"}


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    for (ckpt, ga, mp, lora), (status, peak, runtime) in CELLS.items():
        write_run(ckpt, ga, mp, lora, status, peak, runtime)
    base = os.path.join(ROOT, "base")
    os.makedirs(base)
    write_jsonl(os.path.join(base, "generations.jsonl"), [
        generation("I believe the meaning of life is", " to be happy.\nThe end."),
        generation("Tell me | about <cats> & dogs", " Cats | dogs"),
        generation("Only in base", " x"),
    ])
    with open(os.path.join(base, "perplexity.json"), "w") as f:
        json.dump(perplexity(2.5), f, indent=1)
    tuned = os.path.join(ROOT, name("none", 1, 1, 1))
    write_jsonl(os.path.join(tuned, "generations.jsonl"), [
        generation("Tell me | about <cats> & dogs", " They purr."),
        generation("I believe the meaning of life is", " to learn."),
        generation("I believe the meaning of life is", " a second completion (not shown)"),
    ])
    with open(os.path.join(tuned, "perplexity.json"), "w") as f:
        json.dump(perplexity(2.0), f, indent=1)


if __name__ == "__main__":
    main()
