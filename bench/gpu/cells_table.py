"""The cells of scripts/gpu-check.sh as one Markdown page: each fine-tuning cell's status, peak
beside its memory cap (with the margin), runtime, seconds per sample and that time extrapolated to
the seed's 200 samples (marked: it was not run at 200); generation cells' tokens/s.

    python3 bench/gpu/cells_table.py CELLS.jsonl [MORE.jsonl ...] > table.md

Later files win for a cell measured twice (an earlier session's results first, then this one's).
Standard library only (it runs on the GPU machine too).
"""

import json
import sys

GIB = float(1 << 30)
SEED_200 = "the seed's Table 2 measured 109 s and 283 s for 200 samples"


def read(paths):
    cells = {}
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        cells[record["cell"]] = record
        except FileNotFoundError:
            pass
    return cells


def finetune_row(name, r):
    s = r.get("summary") or {}
    status = s.get("status", "no summary (exit %d)" % r["exit"])
    cap = s.get("memory_cap_gib", 0) or 0
    peak = s.get("peak_allocated_training", 0) / GIB
    shown = "×" if status == "oom" else status
    margin = "%.1f" % (cap - peak) if cap and status == "ok" else ""
    runtime = s.get("runtime_s", 0)
    samples = s.get("samples", 0)
    per = runtime / samples if status == "ok" and samples else None
    return "| %s | %s | %s | %.2f | %s | %s | %s | %s | %s |" % (
        name, shown, s.get("precision", ""), peak, ("%.1f" % cap) if cap else "none", margin,
        ("%.1f" % runtime) if status == "ok" else "", ("%.3f" % per) if per else "",
        ("%.0f (extrapolated)" % (per * 200)) if per else "")


def main(paths):
    cells = read(paths)
    out = ["# GPU cells (scripts/gpu-check.sh)", "",
           "Peak: `peak_allocated_training`, GiB (the CUDA caching allocator's allocated bytes "
           "during the steps; on a dry run llt's counting CPU allocator). Runtime: the training "
           "steps' wall time. 200 samples: seconds per sample x 200, *extrapolated*; " + SEED_200
           + ". × = out of memory under the cap.", "",
           "| cell | status | precision | peak GiB | cap GiB | margin GiB | runtime s | s/sample "
           "| 200 samples s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in cells.items():
        if "summary" in r:
            out.append(finetune_row(name, r))
    gen = [(name, r) for name, r in cells.items() if "results" in r]
    if gen:
        out += ["", "| cell | model | dtype | batch | kv cache | tokens/s |", "|---|---|---|---:|---|---:|"]
        for name, r in gen:
            for g in r["results"]:
                out.append("| %s | %s | %s | %s | %s | %.1f |" % (
                    name, g.get("model"), g.get("dtype"), g.get("batch"), g.get("kv_cache"),
                    g.get("tokens_per_s", 0)))
    git = sorted({r.get("git", "?") for r in cells.values()})
    out += ["", "Git: " + ", ".join(git) + "."]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
