#include "llt/errors.h"

#include <iostream>
#include <string>

#include <c10/util/Exception.h>

namespace llt {
namespace {

// c10::Error messages carry a multi-line C++ backtrace; keep the first line.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

int report_exception(const std::string& tool, const std::exception& e) {
  ExitCode code = ExitCode::kRuntime;
  std::string message = e.what();
  if (const auto* llt_error = dynamic_cast<const Error*>(&e)) {
    code = llt_error->code();
  } else if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    message = c10_error->what_without_backtrace();
    // CUDA OOM is c10::OutOfMemoryError in 2.x; the CPU allocator throws a plain c10::Error.
    if (message.find("out of memory") != std::string::npos ||
        message.find("can't allocate memory") != std::string::npos) {
      code = ExitCode::kOutOfMemory;
    }
  } else if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    code = ExitCode::kOutOfMemory;
    message = "out of host memory (std::bad_alloc)";
  }
  std::cerr << tool << ": error: " << first_line(message) << std::endl;
  return static_cast<int>(code);
}

}  // namespace llt
