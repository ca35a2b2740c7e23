#!/usr/bin/env bash
# Builds llt's fuzz targets (fuzz/: libFuzzer, ASan + UBSan, clang) into build-fuzz/, replays
# every input kept in fuzz/crashes/<target>/, then fuzzes each target for LLT_FUZZ_TIME seconds
# (default 20), LLT_FUZZ_PARALLEL at a time (default 2), seeded from fuzz/seeds.txt (files in
# tests/assets and assets/) and fuzz/corpus/<target>/. Fails on any crash, sanitizer report or
# non-llt exception, except inputs listed in fuzz/known-libtorch.txt (crashes inside LibTorch,
# recorded there and in fuzz/README.md). New crash inputs are left in
# build-fuzz/artifacts/<target>/.
# scripts/test.sh (so CI) runs it with LLT_FUZZ_TIME=30; run it too after changing a parser of user
# files, that parser's target longer (fuzz/README.md). Installs what it needs (root, as install-deps.sh).
# Usage: scripts/fuzz.sh [target...]      (default: every target; names as in fuzz/CMakeLists.txt)
#        LLT_FUZZ_TIME=300 scripts/fuzz.sh pth     (one target, longer)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_time=${LLT_FUZZ_TIME:-20}
parallel=${LLT_FUZZ_PARALLEL:-2}
build=build-fuzz

# The build's packages and what only fuzzing needs (install-deps.sh leaves them out unless
# named): clang, libFuzzer with ASan/UBSan (libclang-rt-14-dev), llvm-symbolizer.
scripts/install-deps.sh clang-14 libclang-rt-14-dev llvm-14
cxx=$(command -v clang++-14)
cc=$(command -v clang-14)
cmake -S fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" >/dev/null
cmake --build "$build" -j "$(nproc)"

all_targets=$(sed -n 's/^llt_fuzz_target(\([a-z0-9_]*\))$/\1/p' fuzz/CMakeLists.txt)
targets=("$@")
((${#targets[@]} > 0)) || read -r -a targets <<<"$(echo $all_targets)"

# Inputs whose crash lies inside LibTorch: "<sha1>  <target>  <note>" (fuzz/README.md says more).
known=$(grep -v '^#' fuzz/known-libtorch.txt 2>/dev/null | awk '{print $1}' || true)
is_known() { [[ -n $known ]] && grep -qx "$(sha1sum <"$1" | cut -c1-40)" <<<"$known"; }

# UBSan aborts with a stack; ASan's leak check stays on. libFuzzer prints sanitizer reports
# through its own copy of stderr, so the targets' own output can be dropped (-close_fd_mask).
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_odr_violation=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[[ -z $symbolizer ]] || export ASAN_SYMBOLIZER_PATH=$symbolizer UBSAN_SYMBOLIZER_PATH=$symbolizer
replay_flags=(-rss_limit_mb=4096 -timeout=20)
flags=("${replay_flags[@]}" -close_fd_mask=3 -print_final_stats=0)

failed=()
recorded=()
# Where a report's first frame outside the sanitizer runtime and libc lies: "LibTorch" or "llt".
crash_site() {
  local frame
  frame=$(grep -E '^ +#[0-9]+ ' "$1" | grep -vE ' in (__interceptor_|__asan|__sanitizer|__ubsan|__libc|abort|raise|gsignal)|libclang_rt|/libc\.so' | head -n 1)
  if grep -qE 'libtorch|libc10|caffe2' <<<"$frame"; then echo LibTorch; else echo llt; fi
}
# 1. Replay: every kept crash input must now be refused cleanly (or be a recorded LibTorch one).
for t in "${targets[@]}"; do
  [[ -d fuzz/crashes/$t ]] || continue
  for input in fuzz/crashes/"$t"/*; do
    [[ -f $input ]] || continue
    if is_known "$input"; then
      recorded+=("$input (inside LibTorch, fuzz/known-libtorch.txt)")
      continue
    fi
    # Without -close_fd_mask: a finding's message (fuzz_input.cpp) goes to the target's stderr.
    if ! "$build/bin/fuzz_$t" "${replay_flags[@]}" "$input" >"$build/replay.log" 2>&1; then
      tail -n 40 "$build/replay.log" >&2
      failed+=("replay of $input (crash site: $(crash_site "$build/replay.log"))")
    fi
  done
done
echo "fuzz.sh: replayed fuzz/crashes/ (${#failed[@]} failed)"

# 2. Fuzz: a fresh working corpus per target, from the seeds.
run_target() {
  local t=$1 corpus=$build/corpus/$1 artifacts=$build/artifacts/$1
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  awk -v t="$t" '$1 == t {print $2}' fuzz/seeds.txt | while read -r f; do cp "$f" "$corpus/"; done
  [[ -d fuzz/corpus/$t ]] && cp fuzz/corpus/"$t"/* "$corpus/"
  "$build/bin/fuzz_$t" "${flags[@]}" -max_total_time="$fuzz_time" -artifact_prefix="$artifacts/" \
    "$corpus" >"$build/fuzz_$t.log" 2>&1
}
pids=()
names=()
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
  echo "fuzz.sh: fuzzing $t for ${fuzz_time}s"
  run_target "$t" &
  pids+=($!)
  names+=("$t")
done
for i in "${!pids[@]}"; do
  t=${names[$i]}
  status=0
  wait "${pids[$i]}" || status=$?
  found=0
  # crash-, leak-, timeout-, oom-: findings; slow-unit- (over 10 s, not a failure) is not.
  for input in "$build/artifacts/$t"/{crash,leak,timeout,oom}-*; do
    [[ -f $input ]] || continue
    found=1
    if is_known "$input"; then
      recorded+=("$input (inside LibTorch, fuzz/known-libtorch.txt)")
    else
      "$build/bin/fuzz_$t" "${replay_flags[@]}" "$input" >"$build/replay.log" 2>&1 || true
      grep -m1 -A30 -E '==ERROR|FINDING|runtime error' "$build/replay.log" >&2 ||
        tail -n 30 "$build/replay.log" >&2
      failed+=("fuzz_$t: $input (crash site: $(crash_site "$build/replay.log"); $build/fuzz_$t.log)")
    fi
  done
  if ((status != 0 && found == 0)); then failed+=("fuzz_$t exit $status ($build/fuzz_$t.log)"); fi
  if ((status != 0 && found == 0)); then tail -n 30 "$build/fuzz_$t.log" >&2; fi
  echo "fuzz.sh: $t: $(grep -o 'stat::number_of_executed_units: [0-9]*\|#[0-9]*.*DONE.*' "$build/fuzz_$t.log" | tail -n 1)"
done

((${#recorded[@]} == 0)) || printf 'fuzz.sh: recorded: %s\n' "${recorded[@]}"
if ((${#failed[@]} > 0)); then
  printf 'fuzz.sh: FAILED: %s\n' "${failed[@]}" >&2
  echo "fuzz.sh: keep each new crash input in fuzz/crashes/<target>/ with its fix and a unit test" \
    "reading it (fuzz/README.md)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${fuzz_time}s each: no crash in llt's code"
