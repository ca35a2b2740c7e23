// llt-finetune: LoRA or full fine-tuning on llt-tokenize shards.
#include "llt/tools/cli.h"
#include "llt/tools/finetune.h"

int main(int argc, char** argv) {
  return llt::tools::tool_main(
      "llt-finetune", [&] { return llt::tools::run_finetune(llt::tools::parse_finetune(argc, argv)); });
}
