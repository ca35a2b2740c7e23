// llt-report's plots from the run folders read by report.h: gnuplot data files and scripts for
// the loss and memory over training and for Table 2 as bars (run_report runs gnuplot on them).
// No torch here: this writes text.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "llt/tools/report.h"

namespace llt::tools {

// The gnuplot data files and scripts (name in DIR/plots/ -> content); each script writes the
// PNG of the same name when run inside DIR/plots/. A plot without data is left out.
std::map<std::string, std::string> plot_files(const std::vector<RunRecord>& runs);

}  // namespace llt::tools
