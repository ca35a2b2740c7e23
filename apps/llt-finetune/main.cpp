// llt-finetune: LoRA or full fine-tuning on llt-tokenize shards.
#include <exception>

#include "llt/cli.h"
#include "llt/errors.h"
#include "llt/runtime.h"
#include "llt/train.h"

int main(int argc, char** argv) {
  llt::init_process();
  try {
    return llt::run_finetune(llt::cli::parse_finetune(argc, argv));
  } catch (const llt::cli::Exit& e) {
    return e.code;
  } catch (const std::exception& e) {
    return llt::report_exception("llt-finetune", e);
  }
}
