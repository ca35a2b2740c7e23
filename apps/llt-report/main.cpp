// llt-report: the seed's Table 1 and Table 2, plots and a before/after sheet from run folders.
#include "llt/tools/cli.h"
#include "llt/tools/report.h"

int main(int argc, char** argv) {
  return llt::tools::tool_main("llt-report",
                             [&] { return llt::tools::run_report(llt::tools::parse_report(argc, argv)); });
}
