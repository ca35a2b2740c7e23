#!/usr/bin/env bash
# Configures (once) and builds llt into build/. Extra arguments are cmake --build arguments,
# e.g. `scripts/build.sh --target llt-generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${LLT_BUILD_DIR:-build}
if [[ ! -f "$build_dir/build.ninja" ]]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build_dir" -j "$(nproc)" "$@"
