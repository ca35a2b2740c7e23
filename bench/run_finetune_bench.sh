#!/usr/bin/env bash
# Fine-tuning step time and memory, llt-finetune (C++) beside the same recipe in eager PyTorch
# (bench/finetune_reference.py): same model, same shard folder (samples in file order: --shuffle
# off), same batch size / accumulation / LoRA / precision / checkpointing, same threads.
# Grid: {stories260K, LLaMA-2-7B shape with 1 layer (random weights)} x {fp32, bf16} x
# {LoRA r=16 on wq,wv, full fine-tuning} x {checkpointing none, block}; the small model also at
# 1 and 2 threads and also with the malloc settings swapped (llt with glibc's defaults, PyTorch
# with llt's), the 7B shape's LoRA rows also at THREADS_PROBE threads.
# Writes results/bench/finetune.jsonl (one record per run and implementation) and prints the
# tables of results/bench/finetune.md (bench/finetune_report.py). Not a test: figures depend on
# the machine and its load (recorded with every record).
# Needs a built tree: BUILD (default build) with llt-finetune and llt-tokenize.
# Knobs: THREADS_7B (2), THREADS_PROBE (1; empty = no probe), STEPS_TINY (20), STEPS_7B (7),
# ACCUM (2), SKIP_7B_FULL_FP32 (0: run it; needs ~9 GB and ~2.5 min per implementation here),
# MODELS ("tiny 7b": which parts to run), SEVEN_RANKS ("16 0": LoRA ranks of the 7B shape),
# OUT (results/bench/finetune.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
threads_7b=${THREADS_7B:-2}
threads_probe=${THREADS_PROBE-1}
steps_tiny=${STEPS_TINY:-20}
steps_7b=${STEPS_7B:-7}
accum=${ACCUM:-2}
work=${WORK:-/tmp/llt-finetune-bench}
out=${OUT:-results/bench/finetune.jsonl}
py=/usr/bin/python3
stories=assets/models/stories260K/stories260K.bin
mkdir -p results/bench "$work"
: >"$out.tmp"

# Data: short samples so a step takes seconds. The small model's 512-piece tokenizer makes
# Alpaca prompts 110-190 tokens, so it needs a longer cut than LLaMA-2's tokenizer.
rm -rf "$work/tok512" "$work/llama2"
"$build/bin/llt-tokenize" --tokenizer assets/models/stories260K/tok512.model \
  --output "$work/tok512" --first 64 --max-len 320 --threads 1 >/dev/null
"$build/bin/llt-tokenize" --tokenizer assets/tokenizers/llama2/tokenizer.model \
  --output "$work/llama2" --first 64 --max-len 128 --threads 1 >/dev/null

load1() { cut -d' ' -f1 /proc/loadavg; }

# run_pair MODEL_ARGS DATA THREADS STEPS PRECISION RANK CKPT: llt, then PyTorch, one record each.
# With variant=swap-malloc, each runs with the other's glibc malloc settings: llt with glibc's
# defaults (LLT_MALLOC_TUNING=0), PyTorch with llt's thresholds (lib/llt/runtime.cpp).
variant=
run_pair() {
  local model_args=$1 data=$2 threads=$3 steps=$4 precision=$5 rank=$6 ckpt=$7
  local base=()
  if [[ $rank -gt 0 && $precision == bf16 ]]; then base=(--base-dtype bf16); fi
  local common=(--data "$data" --precision "$precision" "${base[@]}" --lora-rank "$rank"
                --grad-checkpoint "$ckpt" --grad-accum "$accum" --batch-size 1
                --max-steps "$steps" --threads "$threads")
  local llt_env=() py_env=() llt_impl=llt py_impl=pytorch
  if [[ $variant == swap-malloc ]]; then
    llt_env=(LLT_MALLOC_TUNING=0) llt_impl=llt-malloc-default
    py_env=(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824)
    py_impl=pytorch-malloc-tuned
  fi
  local run="$work/run"
  rm -rf "$run"
  local before; before=$(load1)
  # shellcheck disable=SC2086
  env "${llt_env[@]}" "$build/bin/llt-finetune" $model_args "${common[@]}" --output "$run" \
    --device cpu --shuffle off --log-every 0 2>"$work/llt.log" || { cat "$work/llt.log" >&2; return 1; }
  $py - "$run" "$before" "$llt_impl" "$threads" "$ckpt" "$rank" >>"$out.tmp" <<'PY'
import json, statistics, sys
run, before, impl, threads, ckpt, rank = sys.argv[1:]
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
s = json.load(open(f"{run}/summary.json"))
step_s = [r["step_s"] for r in steps]
print(json.dumps({
    "impl": impl, "model": s["model"], "n_layers": s["n_layers"], "precision": s["precision"],
    "lora_rank": int(rank), "grad_checkpoint": ckpt, "threads": int(threads),
    "steps": len(step_s), "step_s": step_s, "median_step_s": statistics.median(step_s[1:]),
    "losses": [r["loss"] for r in steps], "tokens": s["tokens"],
    "trainable_parameters": s["trainable_parameters"],
    "peak_allocated": s["peak_allocated"], "peak_allocated_training": s["peak_allocated_training"],
    "peak_rss": s["peak_rss"], "memory_breakdown": s["memory_breakdown"],
    "memory_estimate": s["memory_estimate"], "load_before": float(before),
    "load_after": float(open("/proc/loadavg").read().split()[0]),
    "command": s["command_line"], "git_sha": s["git_sha"]}))
PY
  rm -rf "$run"  # full fine-tuning checkpoints of the 7B shape are 5.6 GB
  before=$(load1)
  local model_py=${model_args/--model preset:llama2_7b/--preset llama2_7b}
  # shellcheck disable=SC2086
  env "${py_env[@]}" $py bench/finetune_reference.py $model_py "${common[@]}" 2>"$work/py.log" \
    | $py -c 'if True:
        import json, sys
        r = json.loads(sys.stdin.read())  # after the benchmark has finished
        r.update(impl=sys.argv[1], load_before=float(sys.argv[2]), command=sys.argv[3],
                 load_after=float(open("/proc/loadavg").read().split()[0]))
        print(json.dumps(r))' \
      "$py_impl" "$before" "${py_env[*]} bench/finetune_reference.py $model_py ${common[*]}" \
      >>"$out.tmp" || { cat "$work/py.log" >&2; return 1; }
  $py bench/finetune_report.py --progress "$out.tmp" >&2
}

models=${MODELS:-tiny 7b}
echo "$(date -Is) $(uptime)" >&2
for threads in 1 2; do
  [[ $models == *tiny* ]] || break
  for precision in fp32 bf16; do
    for rank in 16 0; do
      for ckpt in none block; do
        variant= run_pair "--model $stories" "$work/tok512" "$threads" "$steps_tiny" "$precision" \
          "$rank" "$ckpt"
        variant=swap-malloc run_pair "--model $stories" "$work/tok512" "$threads" "$steps_tiny" \
          "$precision" "$rank" "$ckpt"
      done
    done
  done
done
seven="--model preset:llama2_7b --n-layers 1"
for precision in bf16 fp32; do
  [[ $models == *7b* ]] || break
  for rank in ${SEVEN_RANKS:-16 0}; do
    if [[ $precision == fp32 && $rank == 0 && ${SKIP_7B_FULL_FP32:-0} == 1 ]]; then continue; fi
    for ckpt in none block; do
      run_pair "$seven" "$work/llama2" "$threads_7b" "$steps_7b" "$precision" "$rank" "$ckpt"
    done
  done
done
if [[ -n $threads_probe && $models == *7b* ]]; then
  for precision in bf16 fp32; do
    run_pair "$seven" "$work/llama2" "$threads_probe" "$steps_7b" "$precision" 16 none
  done
fi
echo "$(date -Is) $(uptime)" >&2
mv "$out.tmp" "$out"
$py bench/finetune_report.py "$out"
