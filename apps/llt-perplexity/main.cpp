// llt-perplexity: perplexity of a LLaMA checkpoint (+ adapter) over a dataset or a text file.
#include <exception>

#include "llt/cli.h"
#include "llt/errors.h"
#include "llt/perplexity_tool.h"
#include "llt/runtime.h"

int main(int argc, char** argv) {
  llt::init_process();
  try {
    return llt::run_perplexity(llt::cli::parse_perplexity(argc, argv));
  } catch (const llt::cli::Exit& e) {
    return e.code;
  } catch (const std::exception& e) {
    return llt::report_exception("llt-perplexity", e);
  }
}
