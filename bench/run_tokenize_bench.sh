#!/usr/bin/env bash
# llt-tokenize beside the same job in Python (bench/tokenize_reference.py: python3-sentencepiece
# batch encoding on the same threads + h5py), same input, same tokenizer, same thread count,
# alternating runs. Checks that both wrote the same samples, then writes results/bench/tokenize.md
# (machine, commands, medians) and prints it. Needs a built tree (scripts/build.sh).
# Knobs: THREADS (all cores), REPEATS (5), INPUT (the shipped 5,000 samples), BUILD (build).
set -euo pipefail
cd "$(dirname "$0")/.."
export THREADS=${THREADS:-$(nproc)}
export REPEATS=${REPEATS:-5}
export INPUT=${INPUT:-assets/data/alpaca/alpaca_data_first_5000.json}
export BUILD=${BUILD:-build}
export TOKENIZER=assets/tokenizers/llama2/tokenizer.model
mkdir -p results/bench
/usr/bin/python3 - <<'PY'
import datetime, json, os, platform, re, shutil, statistics, subprocess, tempfile, time
import h5py
import numpy as np

threads, repeats = int(os.environ["THREADS"]), int(os.environ["REPEATS"])
inp, tok, build = os.environ["INPUT"], os.environ["TOKENIZER"], os.environ["BUILD"]
work = tempfile.mkdtemp(prefix="llt_tokenize_bench_")
common = ["--input", inp, "--tokenizer", tok, "--threads", str(threads)]
commands = {
    "llt": [f"{build}/bin/llt-tokenize", *common, "--on-bad-record", "skip", "--output"],
    "python": ["/usr/bin/python3", "bench/tokenize_reference.py", *common, "--output"],
}

def run(impl, out):
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    p = subprocess.run(commands[impl] + [out], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    if impl == "llt":  # "... N records tokenized, M samples written in S s (...)"
        m = re.search(r"(\d+) records tokenized, (\d+) samples written in ([0-9.e-]+) s", p.stderr)
        records, seconds = int(m.group(1)), float(m.group(3))
    else:
        r = json.loads(p.stdout)
        records, seconds = r["records"], r["seconds"]
    return {"records": records, "seconds": seconds, "wall": wall}

results = {"llt": [], "python": []}
for i in range(repeats):
    for impl in (("llt", "python") if i % 2 == 0 else ("python", "llt")):
        results[impl].append(run(impl, f"{work}/{impl}"))

def arrays(d):  # every shard concatenated; offsets compared as sample lengths
    m = json.load(open(f"{d}/manifest.json"))
    out = {k: [] for k in ("input_ids", "lengths", "source_lengths", "source_indices")}
    for s in m["shards"]:
        with h5py.File(f"{d}/{s['file']}") as f:
            for k in out:
                out[k].append(np.diff(f["offsets"][...]) if k == "lengths" else f[k][...])
    return {k: np.concatenate(v) for k, v in out.items()}

a, b = arrays(f"{work}/llt"), arrays(f"{work}/python")
same = all(np.array_equal(a[k], b[k]) for k in a)
shutil.rmtree(work)
if not same:
    raise SystemExit("llt and the Python reference wrote different samples")

med = {impl: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "wall")}
       for impl, rs in results.items()}
records = results["llt"][0]["records"]
rate = {impl: records / med[impl]["seconds"] for impl in med}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                       text=True).stdout.strip()
sha += " with uncommitted changes" if dirty else ""
load = os.getloadavg()[0]
lines = [
    "# llt-tokenize vs the same job in Python",
    "",
    f"{datetime.date.today()}, git {sha}, {platform.node()}: {cpu}, {os.cpu_count()} cores "
    f"(load average {load:.2f} at the end; other work on the machine slows both sides).",
    f"Input `{inp}` ({records} usable records), tokenizer `{tok}`, {threads} threads, "
    f"median of {repeats} alternating runs; both wrote identical input_ids, sample "
    "lengths, source_lengths and source_indices.",
    "",
    "| impl | samples/s | job s | process wall s |",
    "| --- | ---: | ---: | ---: |",
]
for impl in ("llt", "python"):
    lines.append(f"| {impl} | {rate[impl]:.0f} | {med[impl]['seconds']:.3f} | {med[impl]['wall']:.3f} |")
lines += [
    "",
    f"llt / python: **{rate['llt'] / rate['python']:.1f}x** samples/s (the job: tokenizer load, "
    "read, parse, tokenize, write shards and manifest); "
    f"{med['python']['wall'] / med['llt']['wall']:.1f}x on whole-process wall time, which adds "
    "process start-up (llt loads libtorch, about 0.3 s here; Python imports numpy/h5py).",
    "",
    "Commands (output directory appended):",
    "",
    "```",
    " ".join(commands["llt"]),
    " ".join(commands["python"]),
    "```",
    "",
    "Reproduce: `THREADS=%d REPEATS=%d bench/run_tokenize_bench.sh`." % (threads, repeats),
]
open("results/bench/tokenize.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
