#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything and runs the whole suite
# with CTest twice: on Debian's LibTorch 1.13 (build/) and on the official CUDA LibTorch 2.11
# (build-cuda/, scripts/build-cuda.sh; CPU device, the gpu tests skip without a GPU), then
# rehearses the GPU machine's check (scripts/gpu-check.sh --dry-run). Where the
# CUDA build cannot be made (no nvcc, no PyPI) its half is skipped with a message, unless
# LLT_REQUIRE_CUDA=1 (CI), which makes that a failure. Extra arguments go to both ctest runs
# (e.g. -L slow, -R Tokenizer). Between the two suites it fuzzes: scripts/fuzz.sh, every target
# LLT_FUZZ_TIME seconds (default here 30), after replaying the kept crash inputs (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh

# CTest of the CMake that configured `dir` (build-cuda/ is configured by a newer one).
run_ctest() {
  local dir=$1 cmake
  shift
  cmake=$(sed -n 's/^CMAKE_COMMAND:INTERNAL=//p' "$dir/CMakeCache.txt")
  (cd "$dir" && "$(dirname "$cmake")/ctest" --output-on-failure -j "$(nproc)" "$@")
}

failed=()
echo "== test.sh: the suite on Debian's LibTorch 1.13 (build/)"
run_ctest build "$@" || failed+=("build/ (LibTorch 1.13)")

echo "== test.sh: scripts/fuzz.sh (every parser of user files, ${LLT_FUZZ_TIME:-30} s each)"
LLT_FUZZ_TIME=${LLT_FUZZ_TIME:-30} scripts/fuzz.sh || failed+=("scripts/fuzz.sh (build-fuzz/)")

echo "== test.sh: the suite on the CUDA LibTorch 2.11 build (build-cuda/)"
cuda=0
scripts/build-cuda.sh || cuda=$?
if ((cuda == 0)); then
  run_ctest build-cuda "$@" || failed+=("build-cuda/ (LibTorch 2.11 CUDA)")
  # The GPU machine's check, rehearsed on this CPU: built from the kit alone (build-gpu-dry/).
  # Then stage 2 again: every cell is on record, so none runs twice.
  echo "== test.sh: scripts/gpu-check.sh --dry-run"
  rm -rf build-gpu-dry/out
  if scripts/gpu-kit.sh && scripts/gpu-check.sh --dry-run &&
    cells=$(wc -l <build-gpu-dry/out/cells.jsonl) && scripts/gpu-check.sh --dry-run --stage 2 &&
    [[ $(wc -l <build-gpu-dry/out/cells.jsonl) == "$cells" ]]; then
    echo "test.sh: gpu-check dry run passed ($cells cells; a rerun skipped them all)"
  else
    failed+=("scripts/gpu-check.sh --dry-run (build-gpu-dry/out/gpu-check.log)")
  fi
elif ((cuda == 77)) && [[ ${LLT_REQUIRE_CUDA:-0} != 1 ]]; then
  echo "test.sh: CUDA LibTorch 2.11 half skipped (see the line above); LLT_REQUIRE_CUDA=1 makes this a failure"
else
  failed+=("the CUDA build (scripts/build-cuda.sh exit $cuda)")
fi

if ((${#failed[@]} > 0)); then
  printf 'test.sh: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "test.sh: both suites and the fuzz run passed"
