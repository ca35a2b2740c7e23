#!/usr/bin/env bash
# Peak RSS and wall time of llt-export on the LLaMA-2-7B shape (preset:llama2_7b: random weights,
# the real 32 x 4096 layout), bf16, for 1, 2 and all 32 layers, as a Hugging Face folder (5GB
# shards, transformers' default) and in Meta's layout; measured with /usr/bin/time -v. Each export
# is written under WORK (default /tmp; 13.5 GB at 32 layers) and deleted before the next. Prints
# one Markdown table row per run. Needs a built tree. Usage: bench/run_export_bench.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${1:-/tmp}/llt-export-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
tokenizer=assets/tokenizers/llama2/tokenizer.model
tiny_tokenizer=assets/models/stories260K/tok512.model
echo "| model | layers | format | tensors (GB) | files | peak RSS (MiB) | wall (s) | command |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"
# preset:tiny first: the process's own footprint (LibTorch and llt loaded, a 2-layer model).
for run in "tiny 0 hf" "llama2_7b 1 hf" "llama2_7b 1 meta" "llama2_7b 2 hf" "llama2_7b 2 meta" \
  "llama2_7b 32 hf" "llama2_7b 32 meta"; do
  read -r preset layers format <<<"$run"
  tok=$tokenizer
  [[ $preset == tiny ]] && tok=$tiny_tokenizer
  out="$work/out"
  cmd="build/bin/llt-export --model preset:$preset --n-layers $layers --dtype bf16 --format $format --tokenizer $tok --threads 2 --output $out"
  /usr/bin/time -v $cmd >"$work/stdout" 2>"$work/time"
  rss_kib=$(sed -n 's/^\tMaximum resident set size (kbytes): //p' "$work/time")
  wall=$(sed -n 's/^\tElapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time")
  seconds=$(/usr/bin/python3 -c "import sys; p=[float(x) for x in sys.argv[1].split(':')]; print(round(sum(v * 60 ** i for i, v in enumerate(reversed(p))), 1))" "$wall")
  bytes=$(find "$out" \( -name '*.safetensors' -o -name '*.pth' \) -print0 | xargs -0 du -cb | tail -n 1 | cut -f1)
  files=$(ls "$out" | wc -l)
  gb=$(/usr/bin/python3 -c "print(f'{$bytes / 1e9:.3f}')")
  echo "| $preset | $layers | $format | $gb | $files | $((rss_kib / 1024)) | $seconds | \`${cmd/$work/WORK}\` |"
  rm -rf "$out"
done
