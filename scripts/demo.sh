#!/usr/bin/env bash
# The README's main command: installs dependencies, builds llt-generate, and generates from the
# shipped stories260K model (a real LLaMA-architecture model, 260K parameters) on the CPU.
# Extra arguments go to llt-generate (e.g. --kv-cache off, --temperature 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh --target llt-generate
build/bin/llt-generate \
  --model assets/models/stories260K/stories260K.bin \
  --tokenizer assets/models/stories260K/tok512.model \
  --prompt "Once upon a time" --prompt "Lily and Tom went to the park" \
  --max-new-tokens 200 --threads 1 "$@"
