// The pickle reader for torch.save's data.pkl (lib/llt/pth.cpp parse_torch_pickle), on its own,
// so mutations reach it without passing the zip layer. Input: a data.pkl.
#include <cstddef>
#include <cstdint>
#include <string>

#include "llt/pth.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string pickle(reinterpret_cast<const char*>(data), size);
  llt::fuzz::expect_llt_errors([&] { llt::parse_torch_pickle(pickle, "fuzz data.pkl"); });
  return 0;
}
