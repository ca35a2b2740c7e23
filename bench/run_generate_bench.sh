#!/usr/bin/env bash
# Generation throughput, llt (C++) beside the same model and decoding in eager PyTorch
# (bench/generate_reference.py), same threads, same prompt ids, greedy, no stop tokens.
# Writes results/bench/generate.jsonl and prints a table. Needs a built tree (scripts/build.sh).
# Knobs: THREADS (1), NEW (256 new tokens), REPEATS (3 for the small model), NEW_FP32_NOCACHE
# (64: the fp32 7B-shaped no-cache run is compute-bound, ~1 s a token at 256 here).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-1}
new=${NEW:-256}
repeats=${REPEATS:-3}
out=results/bench/generate.jsonl
mkdir -p results/bench
: >"$out.tmp"
stories=assets/models/stories260K/stories260K.bin
common="--threads $threads --max-new-tokens $new"
run() {  # both implementations, same arguments
  build/bin/bench_generate "$@" | tee -a "$out.tmp"
  /usr/bin/python3 bench/generate_reference.py "$@" | tee -a "$out.tmp"
}
run --model "$stories" --dtype fp32 $common --repeats "$repeats"
run --model "$stories" --dtype bf16 $common --repeats "$repeats"
run --preset llama2_7b --n-layers 1 --dtype bf16 $common
run --preset llama2_7b --n-layers 1 --dtype fp32 --threads "$threads" \
  --max-new-tokens "${NEW_FP32_NOCACHE:-64}" --kv-cache off --kv-cache on
mv "$out.tmp" "$out"
/usr/bin/python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
key = lambda r: (r["model"], r["dtype"], r["new_tokens"])
print(f"{'model':<44} {'dtype':<5} {'new':>4} {'kv':<3} {'llt tok/s':>10} {'pytorch':>9} {'llt/py':>6} {'kv/nokv llt':>11}")
groups = {}
for r in rows:
    groups.setdefault(key(r), {})[(r["impl"], r["kv_cache"])] = r["tokens_per_s"]
for (model, dtype, new), g in groups.items():
    for kv in ("on", "off"):
        if ("llt", kv) not in g:
            continue
        llt, py = g[("llt", kv)], g.get(("pytorch", kv))
        ratio = f"{g[('llt','on')]/g[('llt','off')]:.1f}x" if kv == "on" and ("llt", "off") in g else ""
        print(f"{model:<44} {dtype:<5} {new:>4} {kv:<3} {llt:>10.1f} {py:>9.1f} {llt/py:>5.2f}x {ratio:>11}")
PY
