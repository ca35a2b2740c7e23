// A model folder's configuration (lib/llt/weights.cpp): Meta's params.json or Hugging Face's
// config.json (picked by the input's first byte, even or odd), beside the weights of a test
// checkpoint, then loading them when the configured model is small enough to build.
// Input: one byte, then the JSON file.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include "llt/weights.h"

#include "fuzz_input.h"
#include "fuzz_model.h"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool meta = data[0] % 2 == 0;
  const fs::path dir = llt::fuzz::fresh_dir("model");
  const fs::path assets = fs::path(LLT_TEST_ASSETS) / "checkpoints";
  if (meta) {
    fs::create_symlink(assets / "meta_bf16" / "consolidated.00.pth", dir / "consolidated.00.pth");
  } else {
    fs::create_symlink(assets / "hf_fp32" / "model.safetensors", dir / "model.safetensors");
  }
  llt::fuzz::write_file(dir / (meta ? "params.json" : "config.json"),
                        {reinterpret_cast<const char*>(data) + 1, size - 1});
  llt::fuzz::expect_llt_errors([&] {
    const llt::ModelArgs args = llt::read_model_args(dir);
    if (llt::fuzz::small_enough(args)) llt::load_model(dir, {});
  });
  return 0;
}
