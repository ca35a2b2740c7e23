#!/usr/bin/env bash
# Configures and builds llt into build/. Extra arguments are cmake --build arguments,
# e.g. `scripts/build.sh --target llt-generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${LLT_BUILD_DIR:-build}
# Configure every time (a few seconds): it also records the current git commit.
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build_dir" -j "$(nproc)" "$@"
