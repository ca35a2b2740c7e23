// llt-report: the seed's Table 1 and Table 2, plots and a before/after sheet from run folders.
#include <exception>

#include "llt/cli.h"
#include "llt/errors.h"
#include "llt/report.h"
#include "llt/runtime.h"

int main(int argc, char** argv) {
  llt::init_process();
  try {
    return llt::run_report(llt::cli::parse_report(argc, argv));
  } catch (const llt::cli::Exit& e) {
    return e.code;
  } catch (const std::exception& e) {
    return llt::report_exception("llt-report", e);
  }
}
