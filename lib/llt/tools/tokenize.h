// llt-tokenize: Alpaca JSON/JSONL in, tokenized HDF5 shards and manifest.json out.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "llt/alpaca.h"
#include "llt/tools/options.h"
#include "llt/tokenizer.h"

namespace llt::tools {

// A contiguous range of source records written to its own directory.
struct SplitSpec {
  std::string name;  // the subdirectory; "" writes straight into --output
  int64_t start = 0;
  int64_t end = 0;  // exclusive
};

// Parses --split "NAME=START:END" (NAME of letters, digits, '_', '-', '.'; 0 <= START < END).
// Throws InputError quoting the spec.
SplitSpec parse_split(const std::string& spec);

// The shipped default input, assets/data/alpaca/alpaca_data_first_5000.json: beside an
// installed tool (<exe dir>/../share/llt/...) or in the source tree. Throws InputError if absent.
std::filesystem::path default_alpaca_input();

// The samples of records[indices[k]] for every k, in that order, tokenized on `threads` threads
// (each with its own CachedEncoder); the result does not depend on the thread count. Throws what
// the tokenizer throws.
std::vector<AlpacaSample> tokenize_records(const std::vector<AlpacaRecord>& records,
                                           const std::vector<int64_t>& indices,
                                           const Tokenizer& tokenizer, int64_t max_len,
                                           int threads);

// Runs llt-tokenize end to end; returns the exit code. `command_line` is recorded in each
// manifest. Throws InputError on bad options or input (nothing is written then), RuntimeError
// on I/O failures, OutOfMemoryError when tokenizing runs out of memory; a failed run leaves
// --output as it was (dataset_folder.h).
int run_tokenize(const TokenizeToolOptions& options, const std::string& command_line);

}  // namespace llt::tools
