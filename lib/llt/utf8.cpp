#include "llt/utf8.h"

#include <algorithm>
#include <cstdint>

#include "llt/errors.h"

namespace llt {
namespace {

// The length of the well-formed sequence starting at text[pos], or 0 if it is ill-formed.
// Ranges from the Unicode Standard, Table 3-7 "Well-Formed UTF-8 Byte Sequences".
size_t sequence_length(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
  const uint8_t b0 = byte(0);
  if (b0 < 0x80) return 1;
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong 3-byte forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates U+D800..U+DFFF
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlong 4-byte forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;  // a continuation byte, C0/C1 (overlong) or F5..FF
  }
  if (pos + n > text.size()) return 0;
  if (byte(1) < lo || byte(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return n;
}

// "byte B (line L, column C)" of byte offset `offset` in `text`: B counts from 0, L and C (in
// bytes) from 1, as an editor shows them.
std::string position(std::string_view text, size_t offset) {
  const size_t line_start = offset == 0 ? 0 : text.rfind('\n', offset - 1) + 1;  // npos + 1 = 0
  const auto line = 1 + std::count(text.begin(), text.begin() + offset, '\n');
  return "byte " + std::to_string(offset) + " (line " + std::to_string(line) + ", column " +
         std::to_string(offset - line_start + 1) + ")";
}

}  // namespace

size_t find_invalid_utf8(std::string_view text, size_t from) {
  size_t pos = from;
  while (pos < text.size()) {
    // ASCII fast path: 8 bytes at a time would need alignment care; a byte loop is fast enough
    // for the megabytes of a data file.
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t n = sequence_length(text, pos);
    if (n == 0) return pos;
    pos += n;
  }
  return std::string_view::npos;
}

void check_utf8_text(std::string_view text, const std::string& where) {
  const size_t invalid = find_invalid_utf8(text);
  const size_t nul = text.find('\0');
  if (nul != std::string_view::npos && nul < invalid) {
    throw InputError(where + ": a NUL byte at " + position(text, nul) +
                     ": expected UTF-8 text, not a binary file");
  }
  if (invalid != std::string_view::npos) {
    throw InputError(where + ": invalid UTF-8 at " + position(text, invalid));
  }
}

}  // namespace llt
