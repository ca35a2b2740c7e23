#!/usr/bin/env bash
# The seed's Table 2 grid on this machine's CPU: gradient accumulation off/on x mixed precision
# off/on x LoRA off/on, each with checkpointing none and block (16 runs of llt-finetune), on the
# 1-layer LLaMA-2-7B-shaped model (random weights: `--model preset:llama2_7b --n-layers 1`,
# LLaMA-2's own tokenizer) over the first SAMPLES Alpaca samples; then llt-report makes Table 1,
# Table 2 and the plots from the 16 run folders.
#
#   GA off: --grad-accum 1 (SAMPLES optimizer steps)   on: --grad-accum SAMPLES (one step)
#   MP off: --precision fp32                           on: --precision bf16 (autocast; weights
#                                                          stay fp32, as the seed's HF Trainer)
#   LoRA off: --lora-rank 0 (full fine-tuning)         on: the brief's r=16, alpha 32, wq,wv
#
# Every run sees the same samples in the same order (--shuffle off). Writes OUT (default
# results/table2-cpu/): runs/<cell>/ (summary.json, metrics.jsonl, memory.jsonl, config.toml of
# each run; checkpoints and adapters are deleted: gigabytes, not needed by the tables) and
# report/ (llt-report's output). Runtimes depend on the machine and its load; the 1-minute load
# average before each run is recorded in OUT/load.txt.
# Builds llt-tokenize, llt-finetune and llt-report into BUILD (default build) first, so the
# runs record the commit they came from.
# Knobs: SAMPLES (8), THREADS (all cores), OUT, WORK (/tmp/llt-table2).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
samples=${SAMPLES:-8}
threads=${THREADS:-$(nproc)}
out=${OUT:-results/table2-cpu}
work=${WORK:-/tmp/llt-table2}

if [[ -e $out ]]; then
  echo "run_table2_grid.sh: $out exists; move it away first (nothing is overwritten)" >&2
  exit 1
fi
LLT_BUILD_DIR=$build scripts/build.sh --target llt-tokenize llt-finetune llt-report
rm -rf "$work"
mkdir -p "$work" "$out/runs"

"$build/bin/llt-tokenize" --tokenizer assets/tokenizers/llama2/tokenizer.model \
  --output "$work/data" --first "$samples" --threads 1 >/dev/null

: >"$out/load.txt"
for ckpt in none block; do
  for lora in 0 16; do
    for precision in fp32 bf16; do
      for accum in 1 "$samples"; do
        ga=$([[ $accum -gt 1 ]] && echo on || echo off)
        mp=$([[ $precision != fp32 ]] && echo on || echo off)
        lo=$([[ $lora -gt 0 ]] && echo on || echo off)
        cell="ga-$ga.mp-$mp.lora-$lo.ckpt-$ckpt"
        echo "$cell load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/load.txt"
        rc=0
        "$build/bin/llt-finetune" --model preset:llama2_7b --n-layers 1 \
          --data "$work/data" --output "$out/runs/$cell" --shuffle off --seed 0 \
          --grad-accum "$accum" --batch-size 1 --precision "$precision" \
          --lora-rank "$lora" --grad-checkpoint "$ckpt" --threads "$threads" \
          --log-every 0 >"$work/$cell.log" 2>&1 || rc=$?
        # 3 (out of memory) is a valid cell of the table (x); anything else stops the grid.
        if [[ $rc -ne 0 && $rc -ne 3 ]]; then
          cat "$work/$cell.log" >&2
          exit "$rc"
        fi
        rm -rf "$out/runs/$cell/checkpoints" "$out/runs/$cell/adapter" \
          "$out/runs/$cell/adapter-peft"
      done
    done
  done
done

"$build/bin/llt-report" "$out"/runs/* --output "$out/report"
