// llt-export: a LLaMA model (+ merged adapter, or a full fine-tuning run) as a Hugging Face
// transformers folder or in Meta's layout.
#include "llt/tools/cli.h"
#include "llt/tools/export.h"

int main(int argc, char** argv) {
  return llt::tools::tool_main(
      "llt-export", [&] { return llt::tools::run_export(llt::tools::parse_export(argc, argv)); });
}
