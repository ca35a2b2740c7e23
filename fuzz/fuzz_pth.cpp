// A torch.save zip archive (.pth, pytorch_model.bin) through llt's PthFile: llt's check of the zip
// directory, LibTorch's zip reader, data.pkl, then every tensor read. Input: a whole file.
#include <cstddef>
#include <cstdint>

#include "llt/pth.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = llt::fuzz::write_file(llt::fuzz::scratch_dir() / "consolidated.00.pth",
                                          {reinterpret_cast<const char*>(data), size});
  llt::fuzz::expect_llt_errors([&] {
    llt::PthFile file(path);
    for (const auto& info : file.tensors()) file.read(info.name);
  });
  return 0;
}
