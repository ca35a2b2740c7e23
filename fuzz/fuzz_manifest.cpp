// A tokenized dataset's manifest.json (lib/llt/shards.cpp read_manifest). Input: the file.
#include <cstddef>
#include <cstdint>

#include "llt/shards.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto dir = llt::fuzz::fresh_dir("dataset");
  llt::fuzz::write_file(dir / "manifest.json", {reinterpret_cast<const char*>(data), size});
  llt::fuzz::expect_llt_errors([&] { llt::read_manifest(dir); });
  return 0;
}
