// Alpaca JSON / JSONL records (lib/llt/alpaca.cpp parse_alpaca_records), and the message of every
// bad record. Input: the data file.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "llt/alpaca.h"

#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  llt::fuzz::expect_llt_errors([&] {
    const llt::AlpacaFile file = llt::parse_alpaca_records(text, "fuzz.json");
    for (const auto& bad : file.bad) llt::describe_bad_record(bad, "fuzz.json");
    for (const auto& r : file.records) llt::format_alpaca_prompt(r.instruction, r.input);
  });
  return 0;
}
