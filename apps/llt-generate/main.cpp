// llt-generate: completions from a LLaMA checkpoint, with or without the KV cache.
#include <exception>

#include "llt/cli.h"
#include "llt/errors.h"
#include "llt/generate_tool.h"
#include "llt/runtime.h"

int main(int argc, char** argv) {
  llt::init_process();
  try {
    return llt::run_generate(llt::cli::parse_generate(argc, argv));
  } catch (const llt::cli::Exit& e) {
    return e.code;
  } catch (const std::exception& e) {
    return llt::report_exception("llt-generate", e);
  }
}
