// llt-perplexity: perplexity of a LLaMA checkpoint (+ adapter) over a dataset or a text file.
#include "llt/tools/cli.h"
#include "llt/tools/perplexity.h"

int main(int argc, char** argv) {
  return llt::tools::tool_main("llt-perplexity", [&] {
    return llt::tools::run_perplexity(llt::tools::parse_perplexity(argc, argv));
  });
}
