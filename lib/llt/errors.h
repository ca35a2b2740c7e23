// Errors the library throws and the exit codes the tools map them to (DESIGN.md "Exit codes").
// The library never exits; only main() catches. Messages name the file, the field, what was
// expected and what was found, on one line.
#pragma once

#include <stdexcept>
#include <string>

namespace llt {

// Process exit codes shared by every tool.
enum class ExitCode : int {
  kOk = 0,
  kBadInput = 1,    // bad usage or bad input (file, flag, field)
  kRuntime = 2,     // anything else that went wrong at run time
  kOutOfMemory = 3,
  kNonFinite = 4,   // loss or logits went NaN/inf (outside fp16 loss scaling)
  kPreempted = 75,  // checkpoint saved after SIGUSR1/SIGTERM; the sbatch template requeues
};

// Base of every llt error: a one-line message and the exit code it maps to.
class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

// Bad flag, missing file, malformed file content: the user can fix it. Exit 1.
class InputError : public Error {
 public:
  explicit InputError(const std::string& message) : Error(ExitCode::kBadInput, message) {}
};

// A failure that is not the input's fault (I/O error, internal invariant). Exit 2.
class RuntimeError : public Error {
 public:
  explicit RuntimeError(const std::string& message) : Error(ExitCode::kRuntime, message) {}
};

// Allocation failed on the device or host. Exit 3.
class OutOfMemoryError : public Error {
 public:
  explicit OutOfMemoryError(const std::string& message)
      : Error(ExitCode::kOutOfMemory, message) {}
};

// Logits or loss went NaN/inf (weights holding NaN/inf, or a compute dtype too narrow). Exit 4.
class NonFiniteError : public Error {
 public:
  explicit NonFiniteError(const std::string& message) : Error(ExitCode::kNonFinite, message) {}
};

// Maps any exception to an exit code and prints "llt-<tool>: error: <message>" on stderr.
// Recognises llt::Error, c10 out-of-memory errors and CLI11-free std exceptions.
int report_exception(const std::string& tool, const std::exception& e);

}  // namespace llt
