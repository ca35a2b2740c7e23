// Stanford Alpaca's prompt templates, exactly as in stanford_alpaca's train.py (PROMPT_DICT), its
// records (reading and validating Alpaca JSON/JSONL) and its training samples (source masking).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llt {

// "prompt_input": used when a record's `input` is non-empty.
inline constexpr const char* kAlpacaPromptInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

// "prompt_no_input": used when `input` is empty.
inline constexpr const char* kAlpacaPromptNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:";

// The Alpaca source text for one record: the template chosen by whether `input` is empty, with
// {instruction} and {input} substituted (each once, as Python's str.format_map does).
std::string format_alpaca_prompt(const std::string& instruction, const std::string& input);

// One Alpaca record: {"instruction", "input", "output"}, all strings.
struct AlpacaRecord {
  std::string instruction;
  std::string input;  // may be empty (then the prompt_no_input template is used)
  std::string output;
};

// Why a record cannot be used: missing or non-string field, empty output, ill-formed UTF-8, over
// the size limit.
struct BadRecord {
  int64_t index = 0;   // 0-based position of the record in the input file
  std::string field;   // "instruction" | "input" | "output" | "" (the record itself)
  std::string reason;  // e.g. "missing", "not a string (number)", "empty", "invalid UTF-8"
};

// What read_alpaca_records() returns: every record in file order; bad ones are default records
// listed in `bad` (sorted by index), so the caller decides whether they matter.
struct AlpacaFile {
  std::vector<AlpacaRecord> records;
  std::vector<BadRecord> bad;
  std::string format;  // "json" (an array of objects) or "jsonl" (one object per line)
};

// Parses Alpaca JSON (an array of objects) or JSONL (one object per non-empty line; chosen when
// the first non-blank byte is not '['). Throws InputError naming `file`, line and column when the
// text is not JSON; record-level problems are returned in `bad`. Keys other than the three
// fields are ignored. A record whose three fields hold more than `max_record_bytes` bytes together
// (0: no limit) is bad: tokenizing it would cost time and memory for a sample cut to max_len.
AlpacaFile parse_alpaca_records(std::string_view text, const std::string& file,
                                int64_t max_record_bytes = 0);

// "<file>: record <index>: field '<field>' is <reason>" (one line).
std::string describe_bad_record(const BadRecord& bad, const std::string& file);

// One training sample as stanford_alpaca's train.py preprocess() builds it.
struct AlpacaSample {
  std::vector<int32_t> ids;      // BOS + tokens(prompt + output) + EOS, cut to max_len
  int32_t source_length = 0;     // tokens masked with -100: min(1 + len(tokens(prompt)), max_len)
  bool truncated = false;        // the full sequence was longer than max_len (EOS may be cut)
  bool prompt_is_prefix = true;  // tokens(prompt + output) starts with tokens(prompt)
  bool has_label() const { return source_length < static_cast<int32_t>(ids.size()); }
};

class CachedEncoder;

// Builds the sample of one record as the reference does: the prompt and output concatenated and
// tokenized once; source_length from the prompt's token count when tokenized on its own (from
// CachedEncoder::encode_with_prefix, without encoding it twice); labels are then -100 on the
// first source_length tokens. Throws what the encoder throws.
AlpacaSample make_alpaca_sample(const AlpacaRecord& record, CachedEncoder& encoder, int32_t bos_id,
                                int32_t eos_id, int64_t max_len);

}  // namespace llt
