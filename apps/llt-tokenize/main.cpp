// llt-tokenize: Alpaca JSON/JSONL -> tokenized HDF5 shards + manifest.json (DESIGN.md "Shards").
#include "llt/cli.h"
#include "llt/tokenize_tool.h"

int main(int argc, char** argv) {
  return llt::cli::tool_main("llt-tokenize", [&] {
    return llt::run_tokenize(llt::cli::parse_tokenize(argc, argv),
                             llt::cli::command_line(argc, argv));
  });
}
