// llt-generate: completions from a LLaMA checkpoint, with or without the KV cache.
#include "llt/tools/cli.h"
#include "llt/tools/generate.h"

int main(int argc, char** argv) {
  return llt::tools::tool_main(
      "llt-generate", [&] { return llt::tools::run_generate(llt::tools::parse_generate(argc, argv)); });
}
