// llt-finetune: LoRA or full fine-tuning on llt-tokenize shards.
#include "llt/cli.h"
#include "llt/train.h"

int main(int argc, char** argv) {
  return llt::cli::tool_main(
      "llt-finetune", [&] { return llt::run_finetune(llt::cli::parse_finetune(argc, argv)); });
}
