#include "fuzz_input.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <system_error>
#include <typeinfo>

#include <cxxabi.h>

#include "llt/errors.h"

namespace llt::fuzz {
namespace fs = std::filesystem;

const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/llt-fuzz-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::perror("llt fuzz: mkdtemp");
      std::abort();
    }
    static const fs::path made = pattern;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(made, ec);
    });
    return made;
  }();
  return dir;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = scratch_dir() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) {
    std::fprintf(stderr, "llt fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

std::vector<std::string_view> split_parts(std::string_view input, size_t parts) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < parts) {
    const size_t at = input.find(kPartSeparator);
    if (at == std::string_view::npos) break;
    out.push_back(input.substr(0, at));
    input.remove_prefix(at + kPartSeparator.size());
  }
  out.push_back(input);
  out.resize(parts);
  return out;
}

namespace {

std::string type_name(const std::exception& e) {
  int status = 0;
  char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
  std::string s = status == 0 ? name : typeid(e).name();
  std::free(name);
  return s;
}

}  // namespace

void expect_llt_errors(const std::function<void()>& body) {
  try {
    body();
  } catch (const llt::Error&) {
    // The input was refused with a message: what a parser should do.
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llt fuzz: FINDING: bad input escaped as %s (not an llt::Error): %s\n",
                 type_name(e).c_str(), e.what());
    std::abort();
  }
}

}  // namespace llt::fuzz
