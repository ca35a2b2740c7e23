// The TOML --config file of every tool (lib/llt/tools/cli.cpp, CLI11's config reader and llt's
// checks on each value). Input: one byte choosing the tool, then the TOML file.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llt/tools/cli.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto path = llt::fuzz::write_file(llt::fuzz::scratch_dir() / "config.toml",
                                          {reinterpret_cast<const char*>(data) + 1, size - 1});
  std::string tool = "llt-fuzz", flag = "--config", file = path.string();
  char* argv[] = {tool.data(), flag.data(), file.data(), nullptr};
  llt::fuzz::expect_llt_errors([&] {
    try {
      switch (data[0] % 5) {
        case 0:
          llt::tools::parse_generate(3, argv);
          break;
        case 1:
          llt::tools::parse_tokenize(3, argv);
          break;
        case 2:
          llt::tools::parse_finetune(3, argv);
          break;
        case 3:
          llt::tools::parse_perplexity(3, argv);
          break;
        default:
          llt::tools::parse_report(3, argv);
          break;
      }
    } catch (const llt::tools::Exit&) {
      // A usage error, printed on one line: the tool exits 1.
    }
  });
  return 0;
}
