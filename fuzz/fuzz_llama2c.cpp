// A legacy llama2.c checkpoint (lib/llt/weights.cpp): format detection from the first bytes, the
// 7-int header, and, for a model small enough to build, loading every weight. Input: the .bin.
#include <cstddef>
#include <cstdint>

#include "llt/weights.h"

#include "fuzz_input.h"
#include "fuzz_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = llt::fuzz::write_file(llt::fuzz::scratch_dir() / "model.bin",
                                          {reinterpret_cast<const char*>(data), size});
  llt::fuzz::expect_llt_errors([&] {
    const llt::ModelArgs args = llt::read_model_args(path);
    if (llt::fuzz::small_enough(args)) llt::load_model(path, {});
  });
  return 0;
}
