// llt-generate: completions from a LLaMA checkpoint, with or without the KV cache.
#include "llt/cli.h"
#include "llt/generate_tool.h"

int main(int argc, char** argv) {
  return llt::cli::tool_main(
      "llt-generate", [&] { return llt::run_generate(llt::cli::parse_generate(argc, argv)); });
}
