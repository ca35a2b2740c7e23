// llt-tokenize: Alpaca JSON/JSONL -> tokenized HDF5 shards + manifest.json (DESIGN.md "Shards").
#include "llt/tools/cli.h"
#include "llt/tools/tokenize.h"

int main(int argc, char** argv) {
  return llt::tools::tool_main("llt-tokenize", [&] {
    return llt::tools::run_tokenize(llt::tools::parse_tokenize(argc, argv),
                             llt::tools::command_line(argc, argv));
  });
}
