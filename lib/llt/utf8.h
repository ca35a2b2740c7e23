// UTF-8 well-formedness (RFC 3629): what llt accepts as text in data files.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace llt {

// The byte offset of the first byte that does not start a well-formed UTF-8 sequence at or after
// `from` (overlong forms, surrogates, code points above U+10FFFF and truncated sequences are
// ill-formed), or std::string_view::npos if there is none.
size_t find_invalid_utf8(std::string_view text, size_t from = 0);

// Whether all of `text` is well-formed UTF-8.
inline bool is_valid_utf8(std::string_view text) {
  return find_invalid_utf8(text) == std::string_view::npos;
}

// Throws InputError "<where>: invalid UTF-8 at byte B (line L, column C)" unless `text` is
// well-formed UTF-8; a NUL byte, the mark of a binary file, is refused the same way.
void check_utf8_text(std::string_view text, const std::string& where);

}  // namespace llt
