#!/usr/bin/env bash
# The prepared check of llt on a GPU machine (the device tool's machine: CMake, ninja, nvcc and a
# Python whose torch is LibTorch 2.11.0+cu130; no apt, no pip index). Run from the repository
# root with $OUT set; everything else of llt's build comes from .gpu-kit/ (scripts/gpu-kit.sh,
# carried with the tree). Two stages, each under its own time limit, each appending to $OUT as
# it goes:
#   stage 1 (LLT_STAGE1_S, 240 s): environment report, configure and build from the kit only,
#           `ctest -L gpu`;
#   stage 2 (LLT_STAGE2_S, 240 s): measurements in priority order, one cell at a time, each
#           cell's result appended to $OUT/cells.jsonl the moment it ends. Cells already in
#           results/gpu/cells.jsonl (an earlier session's, committed) or in $OUT/cells.jsonl are
#           skipped, so the grid may span sessions.
# What comes back (8 files under $OUT): env.txt, gpu-check.log, build.log, gpu-tests.log,
# cells.jsonl, cells.md (bench/gpu/cells_table.py: peaks beside caps, per-sample times),
# runs.tar.gz (run folders less checkpoints and adapters), report.tar.gz (llt-report
# --no-plots over the Table 2 grid's folders).
#
#   scripts/gpu-check.sh [--dry-run] [--stage 1|2]
#   --dry-run  the same stages on this CPU machine, for CI: LibTorch from scripts/build-cuda.sh's
#              wheels, preset:tiny and a few samples, configured from the kit only, never /usr.
# Environment: OUT (required on the GPU), LLT_GIT_SHA (no .git travels), LLT_TORCH_PREFIX (the
# LibTorch to use; default: python3's torch), LLT_CMAKE (default: cmake on PATH).
# Exits 0 when every stage ran and the gpu tests passed; 4 when gpu tests failed (the
# measurements still ran); 3 when the LibTorch found has no CUDA; 1 on a missing kit or an
# unsuitable machine; 2 when configuring, building or a dry run's cell failed. Both stages
# together stay under the device tool's 600 s a command: run it with timeout_s=600.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

dry=0
stages=(1 2)
while (($#)); do
  case $1 in
    --dry-run) dry=1 ;;
    --stage) stages=("$2"); shift ;;
    *) echo "usage: scripts/gpu-check.sh [--dry-run] [--stage 1|2]" >&2; exit 1 ;;
  esac
  shift
done

if ((dry)); then
  build=$root/build-gpu-dry
  OUT=${OUT:-$build/out}
else
  build=$root/build-gpu
  [[ -n ${OUT:-} ]] || { echo "gpu-check: set OUT to the results folder" >&2; exit 1; }
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu-check.log" >&2; }
die() { log "error: $2"; exit "$1"; }

kit=$root/.gpu-kit/root
[[ -f $root/.gpu-kit/.complete ]] || die 1 "no .gpu-kit (scripts/gpu-kit.sh makes it; carry it)"
# The kit's run-time libraries (Debian 12 keeps some in /lib): found by the linker through
# -rpath-link, and by the loader through LD_LIBRARY_PATH for llt's binaries only (kitrun), never
# for cmake, the compiler or python, which must keep the machine's own libssl, zlib, ...
kit_libs=$kit/usr/lib/x86_64-linux-gnu:$kit/lib/x86_64-linux-gnu
kitrun() { LD_LIBRARY_PATH="$kit_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
sha=${LLT_GIT_SHA:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}

# LibTorch and the CMake that configures the build.
if [[ -n ${LLT_TORCH_PREFIX:-} ]]; then
  torch=$LLT_TORCH_PREFIX
elif ((dry)); then  # the wheels scripts/build-cuda.sh unpacked (it must have run)
  torch_dir=$(sed -n 's/^Torch_DIR:PATH=//p' "$root/build-cuda/CMakeCache.txt" 2>/dev/null)
  [[ -n $torch_dir ]] || die 1 "--dry-run needs build-cuda/ (scripts/build-cuda.sh) first"
  torch=$(cd "$torch_dir/../../.." && pwd)
else
  torch=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))') ||
    die 1 "no LLT_TORCH_PREFIX, and python3 could not import torch (above)"
fi
if [[ -n ${LLT_CMAKE:-} ]]; then
  cmake=$LLT_CMAKE
elif ((dry)); then
  cmake=$(sed -n 's/^CMAKE_COMMAND:INTERNAL=//p' "$root/build-cuda/CMakeCache.txt")
else
  cmake=$(command -v cmake) || die 1 "no cmake on PATH"
fi
ctest=$(dirname "$cmake")/ctest
torch_version=$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$torch/version.py")
torch_cuda=$(sed -n "s/^cuda: .* = '\(.*\)'/\1/p" "$torch/version.py")
[[ -n $torch_cuda ]] || die 3 "the LibTorch at $torch ($torch_version) has no CUDA"
site=$(dirname "$torch")
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)

stage1() {
  log "stage 1: environment, build from the kit, ctest -L gpu"
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "llt git: $sha"
    echo "mode: $( ((dry)) && echo dry-run || echo gpu)"
    echo "host: $(uname -srm), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
      --format=csv,noheader 2>/dev/null || echo none)"
    echo "glibc: $(ldd --version | head -n1)"
    echo "libstdc++: newest $(strings "$(g++ -print-file-name=libstdc++.so.6)" | grep -o \
      'GLIBCXX_3\.4\.[0-9]*' | sort -V | tail -n1)"
    echo "torch: $torch_version (CUDA $torch_cuda) at $torch"
    echo "cmake: $("$cmake" --version | head -n1)"
    echo "nvcc: $("$nvcc" --version 2>/dev/null | tail -n1) ($(readlink -f "$nvcc"))"
    echo "g++: $(g++ --version | head -n1)"
    echo "ninja: $(ninja --version 2>/dev/null || echo none)"
  } >"$OUT/env.txt"
  cat "$OUT/env.txt" >&2
  # Debian 12's libraries in the kit need glibc >= 2.36 and GCC 12's libstdc++ (GLIBCXX_3.4.30).
  local glibc
  glibc=$(ldd --version | head -n1 | grep -o '[0-9]*\.[0-9]*$')
  [[ $(printf '%s\n2.36\n' "$glibc" | sort -V | head -n1) == 2.36 ]] ||
    die 1 "glibc $glibc is older than the kit's 2.36"
  strings "$(g++ -print-file-name=libstdc++.so.6)" | grep -q GLIBCXX_3.4.30 ||
    die 1 "this libstdc++ predates GCC 12's (GLIBCXX_3.4.30), which the kit's libraries need"

  # Configure from the kit and LibTorch alone: /usr is ignored as a search prefix.
  "$cmake" -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch;$kit/usr" -DCMAKE_IGNORE_PREFIX_PATH=/usr \
    -DCUDAToolkit_ROOT="$(dirname "$(dirname "$(readlink -f "$nvcc")")")" \
    -DLLT_NCCL_INCLUDE_DIR="$site/nvidia/nccl/include" -DLLT_USE_GLOO=OFF \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$kit_libs" \
    -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-rpath-link,$kit_libs" \
    -DCMAKE_MODULE_LINKER_FLAGS="-Wl,-rpath-link,$kit_libs" \
    -DLLT_GIT_SHA="$sha" >"$OUT/build.log" 2>&1 || die 2 "configure failed (build.log)"
  local found
  found=$(grep -E '^(LLT_SPM_LIBRARY|LLT_HDF5_LIBRARY|LLT_HDF5_INCLUDE_DIR|GTest_DIR|CLI11_DIR|nlohmann_json_DIR):' \
    "$build/CMakeCache.txt")
  echo "$found" >>"$OUT/env.txt"
  if echo "$found" | cut -d= -f2 | grep -v "^$kit/" | grep -q .; then
    die 2 "configure found some of llt's dependencies outside the kit: $(echo "$found" | grep -v "=$kit/")"
  fi
  "$cmake" --build "$build" -j "$(nproc)" --target llt-finetune llt-tokenize llt-generate \
    llt-perplexity llt-report bench_generate test_cuda >>"$OUT/build.log" 2>&1 ||
    die 2 "build failed (build.log)"
  # Every library resolves, and llt's own dependencies from the kit.
  local libs
  libs=$(kitrun ldd "$build/bin/libllt.so" "$build/bin/libllt_spm.so")
  echo "$libs" | grep -E 'hdf5|sentencepiece|gomp|torch_cuda|nccl' >>"$OUT/env.txt"
  echo "$libs" | grep -q 'not found' && die 2 "unresolved libraries: $(echo "$libs" | grep 'not found')"
  echo "$libs" | grep -E 'libhdf5|libsentencepiece' | grep -qv "$kit/" &&
    die 2 "HDF5 or SentencePiece loaded from outside the kit"
  log "built $build against $torch_version; running ctest -L gpu"
  # Tests are processes of their own (per-pid folders): 4 at a time.
  if (cd "$build" && kitrun "$ctest" -L gpu -j 4 --output-on-failure) \
    >"$OUT/gpu-tests.log" 2>&1; then
    log "gpu tests: $(grep -E 'tests passed|tests failed' "$OUT/gpu-tests.log")"
  else  # the measurements still run: exit 4 at the end
    log "gpu tests FAILED: $(grep -E 'tests passed|tests failed' "$OUT/gpu-tests.log")"
    return 4
  fi
}

# ---- stage 2: the cells, in priority order --------------------------------------------------
runs=$build/runs  # packed into $OUT/runs.tar.gz: only files come back
done_cells() {  # a dry run never counts the GPU's committed cells as its own
  { ((dry)) || cat "$root/results/gpu/cells.jsonl"; cat "$OUT/cells.jsonl"; } 2>/dev/null |
    sed -n 's/^{"cell":"\([^"]*\)","exit":[034],.*/\1/p'  # ok, out of memory, not finite
}

# cell ID TOOL ARGS...: runs one measurement unless done; appends its record.
cell() {
  local id=$1 tool=$2
  shift 2
  if done_cells | grep -qx "$id"; then log "cell $id: done before, skipped"; return 0; fi
  if ((stop)); then return 0; fi
  local start=$SECONDS code=0 record
  log "cell $id: $tool $*"
  rm -rf "${runs:?}/$id"  # a folder left by an interrupted earlier try
  if [[ $tool == llt-finetune ]]; then
    kitrun "$build/bin/llt-finetune" "$@" --output "$runs/$id" >"$runs/$id.log" 2>&1 ||
      code=$?
    local summary=null
    [[ -f $runs/$id/summary.json ]] && summary=$(tr -d '\n' <"$runs/$id/summary.json")
    record="{\"cell\":\"$id\",\"exit\":$code,\"wall_s\":$((SECONDS - start)),\"git\":\"$sha\",\"summary\":$summary}"
  else
    local lines
    lines=$(kitrun "$build/bin/$tool" "$@" 2>"$runs/$id.log") || code=$?
    record="{\"cell\":\"$id\",\"exit\":$code,\"wall_s\":$((SECONDS - start)),\"git\":\"$sha\",\"results\":[$(echo "$lines" | grep '^{' | paste -sd, -)]}"
  fi
  echo "$record" >>"$OUT/cells.jsonl"
  log "cell $id: exit $code in $((SECONDS - start)) s"
  # A dry run fails on anything but a result (0 ok, 3 out of memory, 4 not finite).
  if ((dry)) && [[ $code != 0 && $code != 3 && $code != 4 ]]; then
    die 2 "cell $id: exit $code ($runs/$id.log: $(tail -n1 "$runs/$id.log"))"
  fi
}

stage2() {
  log "stage 2: measurements"
  # At the stage's time limit (TERM from timeout, also to the running tool, which finishes its
  # step and exits 75): record that cell as interrupted, start no other.
  stop=0
  trap 'stop=1' TERM
  mkdir -p "$runs"
  local model samples device a100 p100 tokenizer mps
  if ((dry)); then
    model=preset:tiny samples=4 device=cpu a100=39.1 p100=15.4 mps="fp32 bf16"
    tokenizer=assets/models/stories260K/tok512.model
  else
    model=preset:llama2_7b samples=${LLT_GPU_SAMPLES:-16} device=cuda a100=39.1 p100=15.4
    mps="bf16 fp16 fp32" tokenizer=assets/tokenizers/llama2/tokenizer.model
  fi
  local data=$runs/alpaca-$samples
  if [[ ! -f $data/manifest.json ]]; then
    kitrun "$build/bin/llt-tokenize" --tokenizer "$tokenizer" --output "$data" --first "$samples" \
      --max-len 512 >"$runs/tokenize.log" 2>&1 || die 2 "tokenizing failed: $(tail -n1 "$runs/tokenize.log")"
  fi
  local common=(--model "$model" --data "$data" --device "$device" --shuffle off --seed 0
    --batch-size 1 --epochs 1 --save-every 0 --threads "$(nproc)")
  # The seed's Table 2 on the 32-layer shape under the A100-40GB cap, LoRA first (it fits).
  local mp ga
  table2() {
    for mp in $mps; do
      for ga in 8 1; do
        cell "t2-lora$1-$mp-ga$ga" llt-finetune "${common[@]}" --lora-rank "$1" \
          --precision "$mp" --grad-accum "$ga" --memory-cap-gib "$a100"
      done
    done
  }
  table2 16
  local half=fp16
  ((dry)) && half=bf16  # no fp16 on the CPU
  # 7B LoRA under the P100-16GB cap: frozen base in fp16, fp16 autocast, checkpointing.
  cell "p100-lora-$half-base-ckpt" llt-finetune "${common[@]}" --lora-rank 16 --base-dtype "$half" \
    --precision "$half" --grad-checkpoint block --grad-accum 8 --memory-cap-gib "$p100"
  # The 1-layer smoke job (slurm/configs/smoke-p100.toml's shape) under the P100 cap.
  cell "smoke-1layer" llt-finetune "${common[@]}" --n-layers 1 --lora-rank 16 \
    --base-dtype "$half" --precision "$half" --grad-accum 8 --memory-cap-gib "$p100"
  # Generation tokens/s on the whole model: KV cache on and off, batch 1 and 8.
  local preset=${model#preset:} layers=32 batch
  ((dry)) && layers=2
  for batch in 1 8; do
    cell "generate-b$batch" bench_generate --device "$device" --preset "$preset" \
      --n-layers "$layers" --dtype bf16 --kv-cache on --kv-cache off --batch "$batch" \
      --max-new-tokens 64 --repeats 1
  done
  # Full fine-tuning last: on the 7B shape its fp32 weights and gradients alone pass the cap (x).
  table2 0
}

pack() {
  [[ -d $runs ]] || return 0
  tar -C "$runs" --exclude='checkpoints' --exclude='adapter' --exclude='adapter-peft' \
    --exclude='alpaca-*' -czf "$OUT/runs.tar.gz" . 2>/dev/null
  local folders=()  # the Table 2 grid's run folders only
  for d in "$runs"/t2-*/; do [[ -f $d/summary.json ]] && folders+=("$d"); done
  if ((${#folders[@]})); then
    rm -rf "$runs/.report"
    kitrun "$build/bin/llt-report" "${folders[@]}" --output "$runs/.report" --no-plots \
      >>"$OUT/gpu-check.log" 2>&1 && tar -C "$runs/.report" -czf "$OUT/report.tar.gz" .
  fi
  # Every cell, earlier sessions' included, with peaks beside caps and per-sample times.
  local earlier=()
  ((dry)) || earlier=("$root/results/gpu/cells.jsonl")
  python3 "$root/bench/gpu/cells_table.py" "${earlier[@]}" "$OUT/cells.jsonl" >"$OUT/cells.md" ||
    log "cells.md: not made"
}

status=0
for s in "${stages[@]}"; do
  if ((dry)); then limit=0; else limit=${LLT_STAGE1_S:-240}; [[ $s == 2 ]] && limit=${LLT_STAGE2_S:-240}; fi
  export -f log die kitrun stage1 stage2 cell done_cells
  export dry build OUT kit kit_libs sha torch torch_version torch_cuda site nvcc cmake ctest runs root
  code=0
  if ((limit > 0)); then
    timeout --signal=TERM --kill-after=10 "$limit" bash -c "stage$s" || code=$?
  else
    bash -c "stage$s" || code=$?
  fi
  if ((code == 124 || code == 137)); then
    log "stage $s: stopped at its limit of $limit s"
    ((s == 1)) && status=2
  elif ((code == 4)); then
    status=4  # gpu tests failed: the measurements still run
  elif ((code != 0)); then
    log "stage $s: failed (exit $code)"
    status=$code
    ((s == 1)) && break
  fi
done
pack
log "done: exit $status; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$status"
