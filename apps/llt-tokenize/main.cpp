// llt-tokenize: Alpaca JSON/JSONL -> tokenized HDF5 shards + manifest.json (DESIGN.md "Shards").
#include <exception>

#include "llt/cli.h"
#include "llt/errors.h"
#include "llt/runtime.h"
#include "llt/tokenize_tool.h"

int main(int argc, char** argv) {
  llt::init_process();
  try {
    return llt::run_tokenize(llt::cli::parse_tokenize(argc, argv),
                             llt::cli::command_line(argc, argv));
  } catch (const llt::cli::Exit& e) {
    return e.code;
  } catch (const std::exception& e) {
    return llt::report_exception("llt-tokenize", e);
  }
}
