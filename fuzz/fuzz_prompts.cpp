// llt-generate's --prompts-file (lib/llt/tools/generate.cpp read_prompts_file: a JSON object with
// "prompts", JSONL records or plain lines), then each record's template. Input: the file.
#include <cstddef>
#include <cstdint>

#include "llt/tools/generate.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = llt::fuzz::write_file(llt::fuzz::scratch_dir() / "prompts.txt",
                                          {reinterpret_cast<const char*>(data), size});
  llt::fuzz::expect_llt_errors([&] {
    for (const auto& record : llt::tools::read_prompts_file(path.string())) {
      llt::tools::apply_template(record, llt::tools::PromptTemplate::kAlpaca);
      llt::tools::apply_template(record, llt::tools::PromptTemplate::kNone);
    }
  });
  return 0;
}
