// An adapter folder (lib/llt/lora.cpp load_adapter): adapter_config.json and adapter.safetensors,
// loaded into a fresh tiny model (2 layers, dim 8). Input: the JSON, kPartSeparator, the
// safetensors file.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <ATen/ATen.h>

#include "llt/lora.h"
#include "llt/model.h"

#include "fuzz_input.h"

namespace {

llt::ModelArgs tiny_args() {
  llt::ModelArgs args;
  args.dim = 8;
  args.n_layers = 2;
  args.n_heads = 2;
  args.n_kv_heads = 1;
  args.vocab_size = 16;
  args.hidden_dim = 16;
  args.max_seq_len = 16;
  return args;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = llt::fuzz::split_parts({reinterpret_cast<const char*>(data), size}, 2);
  const auto dir = llt::fuzz::fresh_dir("adapter");
  llt::fuzz::write_file(dir / "adapter_config.json", parts[0]);
  llt::fuzz::write_file(dir / "adapter.safetensors", parts[1]);
  llt::Transformer model(tiny_args(), at::TensorOptions().dtype(at::kFloat));
  llt::fuzz::expect_llt_errors([&] { llt::load_adapter(dir, *model); });
  return 0;
}
