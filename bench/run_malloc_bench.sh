#!/usr/bin/env bash
# What llt's glibc allocator tuning (runtime.cpp: init_process) buys: the same llt-finetune and
# bench_generate runs with LLT_MALLOC_TUNING=0 (glibc defaults) and with the tuning, alternated,
# 1 thread. Prints median step time / tokens per second. Needs a built tree.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/llt-malloc-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
stories=assets/models/stories260K
build/bin/llt-tokenize --tokenizer $stories/tok512.model --output "$work/tiny" --first 64 \
  --max-len 320 --threads 1 >/dev/null
build/bin/llt-tokenize --tokenizer assets/tokenizers/llama2/tokenizer.model --output "$work/l2" \
  --first 16 --max-len 128 --threads 1 >/dev/null
median_step() {  # run folder -> median step_s of steps 2..
  /usr/bin/python3 -c "import json,statistics,sys; s=[json.loads(l)['step_s'] for l in open(sys.argv[1])][1:]; print(f'{statistics.median(s):.4f}')" "$1/metrics.jsonl"
}
for round in 1 2; do
  for tuning in 0 1; do
    r="$work/tiny-$round-$tuning"
    LLT_MALLOC_TUNING=$tuning build/bin/llt-finetune --model $stories/stories260K.bin \
      --data "$work/tiny" --output "$r" --threads 1 --grad-accum 4 --max-steps 8 --log-every 0 \
      --device cpu 2>/dev/null
    echo "finetune stories260K LoRA fp32  tuning=$tuning  median step $(median_step "$r") s"
    r="$work/l2-$round-$tuning"
    LLT_MALLOC_TUNING=$tuning build/bin/llt-finetune --model preset:llama2_7b --n-layers 1 \
      --data "$work/l2" --output "$r" --threads 1 --grad-accum 2 --max-steps 3 --log-every 0 \
      --precision bf16 --base-dtype bf16 --device cpu 2>/dev/null
    echo "finetune 7B-shape 1L LoRA bf16  tuning=$tuning  median step $(median_step "$r") s"
    tps=$(LLT_MALLOC_TUNING=$tuning build/bin/bench_generate --model $stories/stories260K.bin \
      --kv-cache on --repeats 3 | /usr/bin/python3 -c "import json,sys; print(round(json.loads(sys.stdin.readline())['tokens_per_s']))")
    echo "generate stories260K kv on      tuning=$tuning  $tps tokens/s"
  done
done
