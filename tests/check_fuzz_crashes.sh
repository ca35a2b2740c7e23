#!/bin/sh
# Every input kept in fuzz/crashes/<target>/ (found by the fuzzers; scripts/fuzz.sh replays them,
# but CI does not fuzz) is also a unit test of this suite: some tests/test_*.cpp names its file.
# Inputs recorded as crashing inside LibTorch (fuzz/known-libtorch.txt) are left out: a unit test
# would crash the suite. Usage: tests/check_fuzz_crashes.sh <source tree>
cd "$1" || exit 1
missing=0
n=0
for f in fuzz/crashes/*/*; do
  [ -f "$f" ] || continue
  n=$((n + 1))
  sha1=$(sha1sum <"$f" | cut -c1-40)
  if grep -v '^#' fuzz/known-libtorch.txt 2>/dev/null | grep -q "^$sha1"; then
    echo "$f: recorded as a crash inside LibTorch (fuzz/known-libtorch.txt), no unit test"
  elif ! grep -qF "${f##*/}" tests/test_*.cpp; then
    echo "$f: no tests/test_*.cpp reads it (each kept input is a unit test too: fuzz/README.md)"
    missing=$((missing + 1))
  fi
done
echo "$n kept fuzz inputs, $missing without a unit test"
[ "$missing" = 0 ]
