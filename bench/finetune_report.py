#!/usr/bin/python3
"""Markdown tables from results/bench/finetune.jsonl (written by bench/run_finetune_bench.sh):
step times llt vs PyTorch, bf16 vs fp32, checkpointing overhead, threads, measured memory vs
llt's analytic estimate, and the issue's targets met or missed.

  /usr/bin/python3 bench/finetune_report.py results/bench/finetune.jsonl
  /usr/bin/python3 bench/finetune_report.py --progress FILE   (the last pair, one line)
"""

import json
import sys

MB = 1024 * 1024


def model_name(r):
    return "7B-shape 1 layer" if "llama2_7b" in r["model"] else "stories260K"


def training(r):
    return f"LoRA r={r['lora_rank']}" if r["lora_rank"] > 0 else "full"


def key(r):
    return (model_name(r), r["threads"], r["precision"], training(r), r["grad_checkpoint"])


def pct(x):
    return f"{100 * x:+.0f}%"


def progress(path):
    """One line for the last llt / PyTorch pair of records."""
    a, b = (json.loads(line) for line in open(path).read().splitlines()[-2:])
    print(f"{' '.join(str(x) for x in key(a)):<40} llt {a['median_step_s']:.3f} s  "
          f"pytorch {b['median_step_s']:.3f} s  load {a['load_before']:.2f}")


def main():
    if sys.argv[1] == "--progress":
        return progress(sys.argv[2])
    rows = [json.loads(line) for line in open(sys.argv[1])]
    runs = {}  # key -> {impl: record}
    for r in rows:
        runs.setdefault(key(r), {})[r["impl"]] = r
    targets = {"not slower than PyTorch": [], "tiny >= 1.5x": [], "bf16 >= 2x (7B)": [],
               "checkpointing <= 35%": [], "memory within 15%": []}

    print("### Step time (median of steps 2..N) and memory\n")
    print("| model | thr | prec | training | ckpt | llt s | PyTorch s | PyTorch/llt | llt peak "
          "alloc MB | estimate MB | meas/est | llt peak RSS MB | PyTorch peak RSS MB (training) "
          "| load |")
    print("| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    for k, g in runs.items():
        a, b = g.get("llt"), g.get("pytorch")
        if a is None or b is None:
            continue
        speed = b["median_step_s"] / a["median_step_s"]
        est = a["memory_estimate"]["total"]
        meas = a["peak_allocated_training"]
        py_rss = b.get("peak_rss_training") or b["peak_rss"]
        print(f"| {' | '.join(str(x) for x in k)} | {a['median_step_s']:.3f} | "
              f"{b['median_step_s']:.3f} | {speed:.2f}x | {meas / MB:.0f} | {est / MB:.0f} | "
              f"{pct(meas / est - 1)} | {a['peak_rss'] / MB:.0f} | {b['peak_rss'] / MB:.0f} "
              f"({py_rss / MB:.0f}) | {a['load_before']:.1f} |")
        targets["not slower than PyTorch"].append((k, speed >= 1.0, f"{speed:.2f}x"))
        if k[0] == "stories260K":
            targets["tiny >= 1.5x"].append((k, speed >= 1.5, f"{speed:.2f}x"))
        targets["memory within 15%"].append((k, abs(meas / est - 1) <= 0.15, pct(meas / est - 1)))

    print("\n### bf16 speed-up over fp32 (fp32 step time / bf16 step time)\n")
    print("| model | thr | training | ckpt | llt | PyTorch |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for k, g in runs.items():
        if k[2] != "bf16":
            continue
        f = runs.get((k[0], k[1], "fp32", k[3], k[4]))
        if not f or "llt" not in f or "llt" not in g:
            continue
        cells = []
        for impl in ("llt", "pytorch"):
            if impl in f and impl in g:
                cells.append(f[impl]["median_step_s"] / g[impl]["median_step_s"])
            else:
                cells.append(float("nan"))
        print(f"| {k[0]} | {k[1]} | {k[3]} | {k[4]} | {cells[0]:.2f}x | {cells[1]:.2f}x |")
        if k[0] != "stories260K":
            targets["bf16 >= 2x (7B)"].append((k, cells[0] >= 2.0, f"{cells[0]:.2f}x"))

    print("\n### Checkpointing overhead (block / none - 1)\n")
    print("| model | thr | prec | training | llt | PyTorch |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for k, g in runs.items():
        if k[4] != "block":
            continue
        n = runs.get(k[:4] + ("none",))
        if not n or "llt" not in n or "llt" not in g:
            continue
        cells = [g[i]["median_step_s"] / n[i]["median_step_s"] - 1 for i in ("llt", "pytorch")]
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {pct(cells[0])} | {pct(cells[1])} |")
        targets["checkpointing <= 35%"].append((k, cells[0] <= 0.35, pct(cells[0])))

    print("\n### Threads: step time at 1 and 2 threads\n")
    print("| model | prec | training | ckpt | llt 1 / 2 thr s | PyTorch 1 / 2 thr s | faster |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k, g in runs.items():
        if k[1] != 1:
            continue
        two = runs.get((k[0], 2) + k[2:])
        if not two:
            continue
        t = {i: (g[i]["median_step_s"], two[i]["median_step_s"]) for i in ("llt", "pytorch")}
        faster = "/".join(f"{i} {1 if t[i][0] <= t[i][1] else 2}" for i in t)
        print(f"| {k[0]} | {k[2]} | {k[3]} | {k[4]} | {t['llt'][0]:.3f} / {t['llt'][1]:.3f} | "
              f"{t['pytorch'][0]:.3f} / {t['pytorch'][1]:.3f} | {faster} |")

    print("\n### Small model: glibc malloc settings swapped (llt's thresholds: mmap 32 MiB, trim "
          "1 GiB; PyTorch: glibc defaults)\n")
    print("| model | thr | prec | training | ckpt | llt s | llt, glibc default s | PyTorch s | "
          "PyTorch, llt's settings s | PyTorch/llt, both default | both llt's settings |")
    print("| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, g in runs.items():
        impls = ("llt", "llt-malloc-default", "pytorch", "pytorch-malloc-tuned")
        if not all(i in g for i in impls):
            continue
        t = [g[i]["median_step_s"] for i in impls]
        print(f"| {' | '.join(str(x) for x in k)} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | "
              f"{t[3]:.3f} | {t[2] / t[1]:.2f}x | {t[3] / t[0]:.2f}x |")

    print("\n### Targets\n")
    print("| target | met | missed (where) |")
    print("| --- | ---: | --- |")
    for name, results in targets.items():
        met = sum(1 for _, ok, _ in results if ok)
        missed = "; ".join(f"{' '.join(str(x) for x in k)}: {v}" for k, ok, v in results if not ok)
        print(f"| {name} | {met}/{len(results)} | {missed or '-'} |")


if __name__ == "__main__":
    main()
