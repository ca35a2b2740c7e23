// llt-perplexity: perplexity of a LLaMA checkpoint (+ adapter) over a dataset or a text file.
#include "llt/cli.h"
#include "llt/perplexity_tool.h"

int main(int argc, char** argv) {
  return llt::cli::tool_main("llt-perplexity", [&] {
    return llt::run_perplexity(llt::cli::parse_perplexity(argc, argv));
  });
}
