// Helpers shared by the test files: scratch folders and running the built tools.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "llt/errors.h"

namespace llt::testing {

// `name` inside a per-process scratch folder (CTest runs each test as its own process, maybe in
// parallel), emptied now and removed with the whole folder when the process exits.
inline std::filesystem::path fresh_dir(const std::string& name) {
  struct Root {
    std::filesystem::path path = std::filesystem::temp_directory_path() /
                                 ("llt_test_" + std::to_string(getpid()));
    ~Root() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  };
  static const Root root;
  const auto dir = root.path / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A fresh folder for the running test, <temp>/llt_<suite>_<test>_<pid>, removed with what it
// holds when the object goes out of scope.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "llt_" + std::string(test->test_suite_name()) + "_" + test->name() + "_" +
                       std::to_string(getpid());
    std::replace(name.begin(), name.end(), '/', '_');  // parameterised tests: "Prefix/Suite"
    path = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

struct ToolRun {
  int code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command_line` (a built tool's name and its arguments, resolved in the build's bin/
// folder) through the shell and returns its exit code and output.
inline ToolRun run_tool(const std::string& command_line) {
  const std::string cmd = std::string(LLT_BINARY_DIR) + "/bin/" + command_line + " 2>&1";
  ToolRun r;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Copies the llama2.c checkpoint `from` to `to` with every block's attention RMSNorm weight set
// to NaN. The layout (karpathy/llama2.c run.c): 7 int32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; vocab_size < 0: separate output weights), then float32 tensors,
// first the token embeddings (vocab, dim), then rms_att_weight (n_layers, dim).
inline void write_nan_llama2c_copy(const std::filesystem::path& from,
                                   const std::filesystem::path& to) {
  std::ifstream in(from, std::ios::binary);
  std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  int32_t header[7];
  ASSERT_GE(bytes.size(), sizeof(header));
  std::copy_n(bytes.data(), sizeof(header), reinterpret_cast<char*>(header));
  const int64_t dim = header[0], n_layers = header[2], vocab = std::abs(header[5]);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const size_t rms_att = sizeof(header) + sizeof(float) * vocab * dim;
  ASSERT_LE(rms_att + sizeof(float) * n_layers * dim, bytes.size());
  for (int64_t i = 0; i < n_layers * dim; ++i) {
    std::copy_n(reinterpret_cast<const char*>(&nan), sizeof(float),
                bytes.data() + rms_att + sizeof(float) * i);
  }
  std::ofstream(to, std::ios::binary) << bytes;
}

// Runs `body`, expecting an llt::InputError whose one-line message contains every needle;
// returns the message ("" if none was thrown).
template <typename Fn>
std::string expect_input_error(Fn body, const std::vector<std::string>& needles) {
  try {
    body();
    ADD_FAILURE() << "expected llt::InputError";
  } catch (const llt::InputError& e) {
    const std::string what = e.what();
    for (const auto& needle : needles) EXPECT_NE(what.find(needle), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "one line: " << what;
    return what;
  }
  return "";
}

}  // namespace llt::testing
