// llt-perplexity: mean next-token NLL and perplexity of a model (base, base + --adapter, or a
// merged checkpoint) over an llt-tokenize dataset (--data) or a text file's sliding windows
// (--text). Writes OUTPUT/perplexity.json and, with --per-sample, one JSONL record per sample.
#pragma once

#include "llt/tools/options.h"

namespace llt::tools {

// Runs llt-perplexity end to end; returns the exit code (0). Checks every option, the output
// files (refused if they exist, unless --overwrite) and the data against the model before the
// model loads; writes nothing on error. Throws InputError on bad input, llt::Error otherwise.
int run_perplexity(const PerplexityToolOptions& options);

}  // namespace llt::tools
