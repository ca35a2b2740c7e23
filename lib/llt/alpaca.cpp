#include "llt/alpaca.h"

#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

#include "llt/encode_cache.h"
#include "llt/errors.h"
#include "llt/json_fields.h"
#include "llt/utf8.h"

namespace llt {
namespace {

void replace_once(std::string& text, const std::string& key, const std::string& value) {
  const auto pos = text.find(key);
  if (pos != std::string::npos) text.replace(pos, key.size(), value);
}

}  // namespace

std::string format_alpaca_prompt(const std::string& instruction, const std::string& input) {
  std::string text = input.empty() ? kAlpacaPromptNoInput : kAlpacaPromptInput;
  // {input} comes after {instruction} in both templates: substitute it first so an instruction
  // that itself contains "{input}" is left as written.
  replace_once(text, "{input}", input);
  replace_once(text, "{instruction}", instruction);
  return text;
}

}  // namespace llt

// ---------------------------------------------------------------------------------------------
// Reading Alpaca JSON / JSONL

namespace llt {
namespace {

constexpr const char* kFields[] = {"instruction", "input", "output"};

// Line and column (1-based, columns in bytes) of byte offset `offset` in `text`.
std::string line_column(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  const size_t line =
      1 + static_cast<size_t>(std::count(text.begin(), text.begin() + offset, '\n'));
  const size_t last_newline = text.rfind('\n', offset == 0 ? 0 : offset - 1);
  const size_t column = (last_newline == std::string_view::npos || last_newline >= offset)
                            ? offset + 1
                            : offset - last_newline;
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

// nlohmann's message without its "[json.exception...] parse error at line L, column C: " prefix.
std::string parse_reason(const nlohmann::json::parse_error& e) {
  const std::string what = e.what();
  const size_t column = what.find("column ");
  const size_t colon = column == std::string::npos ? column : what.find(": ", column);
  return colon == std::string::npos ? what : what.substr(colon + 2);
}

// Ill-formed UTF-8 is a record-level problem, but nlohmann rejects the whole text for it. So
// each ill-formed byte is replaced by a marker byte that the file does not otherwise contain
// (not even as a \u00XX escape); a field holding the marker is then known to be invalid UTF-8.
struct Utf8Scrub {
  std::string text;             // the text with ill-formed bytes replaced
  std::vector<size_t> invalid;  // offsets of the replaced bytes, ascending
  char marker = 0;

  bool touched(const std::string& s) const { return !invalid.empty() && s.find(marker) != s.npos; }
  bool is_invalid(size_t offset) const {
    return std::binary_search(invalid.begin(), invalid.end(), offset);
  }
};

bool contains_escape_for(std::string_view text, char c) {
  static const char* kHex = "0123456789abcdef";
  const auto u = static_cast<unsigned char>(c);
  const char hi = kHex[u >> 4], lo = kHex[u & 15];
  for (size_t pos = text.find("\\u00"); pos != std::string_view::npos;
       pos = text.find("\\u00", pos + 1)) {
    if (pos + 6 > text.size()) break;
    if (std::tolower(static_cast<unsigned char>(text[pos + 4])) == hi &&
        std::tolower(static_cast<unsigned char>(text[pos + 5])) == lo) {
      return true;
    }
  }
  return false;
}

Utf8Scrub scrub_utf8(std::string_view text, const std::string& file) {
  Utf8Scrub s;
  for (size_t pos = find_invalid_utf8(text); pos != std::string_view::npos;
       pos = find_invalid_utf8(text, pos + 1)) {
    s.invalid.push_back(pos);
  }
  s.text = std::string(text);
  if (s.invalid.empty()) return s;
  // Printable ASCII that may stand unescaped inside a JSON string.
  for (const char c : std::string_view("\x7f~`|^@#$%&*+=;<>?!_")) {
    if (text.find(c) == std::string_view::npos && !contains_escape_for(text, c)) {
      s.marker = c;
      break;
    }
  }
  if (s.marker == 0) {
    throw InputError(file + ": invalid UTF-8 at " + line_column(text, s.invalid.front()));
  }
  for (const size_t pos : s.invalid) s.text[pos] = s.marker;
  return s;
}

std::string json_type(const nlohmann::json& j) {
  return j.is_null() ? "null" : j.type_name();
}

// Fills `record` from a parsed JSON value, or returns why it cannot be used.
bool read_record(const nlohmann::json& j, const Utf8Scrub& scrub, int64_t max_bytes, int64_t index,
                 AlpacaRecord& record, BadRecord& bad) {
  bad = BadRecord{index, "", ""};
  if (!j.is_object()) {
    bad.reason = "not a JSON object (found " + json_type(j) + ")";
    return false;
  }
  std::string* out[] = {&record.instruction, &record.input, &record.output};
  for (int k = 0; k < 3; ++k) {
    bad.field = kFields[k];
    const auto it = j.find(kFields[k]);
    if (it == j.end()) {
      bad.reason = "missing";
      return false;
    }
    if (!it->is_string()) {
      bad.reason = "not a string (found " + json_type(*it) + ")";
      return false;
    }
    *out[k] = it->get<std::string>();
    if (scrub.touched(*out[k])) {
      bad.reason = "not valid UTF-8";
      return false;
    }
  }
  if (record.output.empty()) {
    bad.field = "output";
    bad.reason = "empty";
    return false;
  }
  const size_t bytes = record.instruction.size() + record.input.size() + record.output.size();
  if (max_bytes > 0 && bytes > static_cast<size_t>(max_bytes)) {
    bad.field = "";
    bad.reason = "instruction + input + output are " + std::to_string(bytes) +
                 " bytes, over the limit of " + std::to_string(max_bytes) + " (--max-record-bytes)";
    return false;
  }
  return true;
}

void add_record(AlpacaFile& out, const nlohmann::json& j, const Utf8Scrub& scrub,
                int64_t max_bytes) {
  const auto index = static_cast<int64_t>(out.records.size());
  AlpacaRecord record;
  BadRecord bad;
  if (read_record(j, scrub, max_bytes, index, record, bad)) {
    out.records.push_back(std::move(record));
  } else {
    out.records.emplace_back();
    out.bad.push_back(std::move(bad));
  }
}

std::string syntax_error(const Utf8Scrub& scrub, const nlohmann::json::parse_error& e,
                         size_t base) {
  // e.byte counts the bytes read, the offending one included.
  const size_t offset = base + (e.byte > 0 ? e.byte - 1 : 0);
  if (scrub.is_invalid(offset)) {
    return "invalid UTF-8 byte at " + line_column(scrub.text, offset);
  }
  return "invalid JSON at " + line_column(scrub.text, offset) + ": " + parse_reason(e);
}

void parse_json_array(const Utf8Scrub& scrub, const std::string& file, int64_t max_bytes,
                      AlpacaFile& out) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(scrub.text);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(file + ": " + syntax_error(scrub, e, 0));
  } catch (const nlohmann::json::out_of_range& e) {  // a number beyond double's range: 1e400
    throw InputError(file + ": invalid JSON: " + number_overflow(e));
  }
  if (!doc.is_array()) {
    throw InputError(file + ": expected a JSON array of Alpaca records, found " + json_type(doc));
  }
  out.records.reserve(doc.size());
  for (const auto& j : doc) add_record(out, j, scrub, max_bytes);
}

// JSONL: a line that is not JSON is a bad record (the other lines still parse).
void parse_json_lines(const Utf8Scrub& scrub, int64_t max_bytes, AlpacaFile& out) {
  const std::string& text = scrub.text;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + begin, end - begin);
    if (line.find_first_not_of(" \t\r") != std::string_view::npos) {
      try {
        add_record(out, nlohmann::json::parse(line), scrub, max_bytes);
      } catch (const nlohmann::json::parse_error& e) {
        out.bad.push_back(
            {static_cast<int64_t>(out.records.size()), "", syntax_error(scrub, e, begin)});
        out.records.emplace_back();
      } catch (const nlohmann::json::out_of_range& e) {  // a number beyond double's range
        out.bad.push_back(
            {static_cast<int64_t>(out.records.size()), "",
             "invalid JSON at " + line_column(scrub.text, begin) + ": " + number_overflow(e)});
        out.records.emplace_back();
      }
    }
    begin = end + 1;
  }
}

}  // namespace

AlpacaFile parse_alpaca_records(std::string_view text, const std::string& file,
                                int64_t max_record_bytes) {
  const Utf8Scrub scrub = scrub_utf8(text, file);
  AlpacaFile out;
  size_t first = 0;
  if (scrub.text.compare(0, 3, "\xEF\xBB\xBF") == 0) first = 3;  // a UTF-8 byte order mark
  first = scrub.text.find_first_not_of(" \t\r\n", first);
  if (first == std::string::npos) throw InputError(file + ": empty file (no Alpaca records)");
  if (scrub.text[first] == '[') {
    out.format = "json";
    parse_json_array(scrub, file, max_record_bytes, out);
  } else {
    // One JSON object over the whole file (pretty-printed, or a wrapper such as {"data": [...]})
    // is not JSONL; a single-line Alpaca record is.
    const auto whole = nlohmann::json::parse(scrub.text, nullptr, /*allow_exceptions=*/false);
    const bool one_line =
        scrub.text.find_first_not_of(" \t\r\n", scrub.text.find('\n')) == std::string::npos;
    const bool record_like =
        whole.is_object() && std::any_of(std::begin(kFields), std::end(kFields),
                                         [&](const char* k) { return whole.contains(k); });
    if (whole.is_object() && !(one_line && record_like)) {
      throw InputError(file + ": expected a JSON array of Alpaca records (or JSONL, one record " +
                       "per line), got an object");
    }
    out.format = "jsonl";
    parse_json_lines(scrub, max_record_bytes, out);
  }
  return out;
}

std::string describe_bad_record(const BadRecord& bad, const std::string& file) {
  std::string s = file + ": record " + std::to_string(bad.index) + ": ";
  if (bad.field.empty()) return s + bad.reason;
  return s + "field '" + bad.field + "' is " + bad.reason;
}

AlpacaSample make_alpaca_sample(const AlpacaRecord& record, CachedEncoder& encoder, int32_t bos_id,
                                int32_t eos_id, int64_t max_len) {
  // stanford_alpaca: sources = [prompt]; examples = [prompt + output + eos_token]; both
  // tokenized with BOS and cut to model_max_length; labels[:len(source ids)] = -100.
  const std::string prompt = format_alpaca_prompt(record.instruction, record.input);
  const PrefixEncoding body = encoder.encode_with_prefix(prompt + record.output, prompt.size());
  AlpacaSample sample;
  sample.ids.reserve(body.ids.size() + 2);
  sample.ids.push_back(bos_id);
  sample.ids.insert(sample.ids.end(), body.ids.begin(), body.ids.end());
  sample.ids.push_back(eos_id);
  sample.prompt_is_prefix = body.prefix_is_prefix;
  const auto cap = static_cast<size_t>(max_len);
  sample.truncated = sample.ids.size() > cap;
  if (sample.truncated) sample.ids.resize(cap);
  sample.source_length =
      static_cast<int32_t>(std::min(static_cast<size_t>(1 + body.prefix_tokens), cap));
  return sample;
}

}  // namespace llt
