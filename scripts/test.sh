#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything, runs the whole suite
# with CTest. Extra arguments go to ctest (e.g. -L slow, -R Tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" "$@"
