// llt-report: the seed's Table 1 and Table 2, plots and a before/after sheet from run folders.
#include "llt/cli.h"
#include "llt/report.h"

int main(int argc, char** argv) {
  return llt::cli::tool_main("llt-report",
                             [&] { return llt::run_report(llt::cli::parse_report(argc, argv)); });
}
