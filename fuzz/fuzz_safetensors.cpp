// The safetensors reader (lib/llt/safetensors.cpp): header length, JSON header, byte ranges,
// then every tensor read. Input: a whole .safetensors file.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "llt/safetensors.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = llt::fuzz::write_file(llt::fuzz::scratch_dir() / "input.safetensors",
                                          {reinterpret_cast<const char*>(data), size});
  llt::fuzz::expect_llt_errors([&] {
    llt::SafetensorsFile file(path);
    for (const auto& info : file.tensors()) file.read(info.name);
  });
  return 0;
}
