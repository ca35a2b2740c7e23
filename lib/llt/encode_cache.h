// Fast, exact SentencePiece encoding for bulk tokenization (llt-tokenize): text is cut into
// whitespace-led segments, each segment is encoded once by SentencePiece and its ids are cached.
//
// Why it is exact: for a BPE model with an identity normalizer, a merge only ever forms a piece
// of the vocabulary. If no piece holds a non-space character followed by "▁" (U+2581, the escaped
// space), no merge can cross the point just before a run of spaces, so encoding the text equals
// concatenating the encodings of the segments between such points. plan_segmentation() checks
// these conditions on the model file itself; where any fails, CachedEncoder encodes whole texts.
// tests/test_tokenize.cpp checks equality with whole-text encoding on the 5,000 Alpaca samples.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "llt/tokenizer.h"

namespace llt {

// Whether segment-wise encoding is exact for a SentencePiece model, and why not if it is not.
struct SegmentationPlan {
  bool exact = false;
  std::string reason;  // why segmentation is off (empty when exact)
};

// Reads the SentencePiece model file (its protobuf, without SentencePiece) and checks: BPE, no
// normalization rules, dummy prefix on, extra whitespace kept, no user-defined pieces, no piece
// with "▁" after another character. Throws InputError if the file is not a readable model proto.
SegmentationPlan plan_segmentation(const std::filesystem::path& model_file);

// Segment ids shared by the CachedEncoders of several threads, so each distinct segment goes to
// SentencePiece about once however many threads there are. Thread-safe (64 locked shards).
class SharedSegmentCache {
 public:
  SharedSegmentCache();
  ~SharedSegmentCache();

  // Appends the ids cached under `key` to `out` and returns true, or returns false.
  bool lookup(const std::string& key, std::vector<int32_t>& out) const;
  // Caches `ids` under `key` (a no-op if present, or once the cache is full).
  void insert(const std::string& key, const std::vector<int32_t>& ids);

 private:
  struct Shard;
  std::unique_ptr<Shard[]> shards_;
};

// The ids of a text and what the ids of one of its prefixes would be.
struct PrefixEncoding {
  std::vector<int32_t> ids;      // encode(text)
  int64_t prefix_tokens = 0;     // encode(text[0, prefix)).size()
  bool prefix_is_prefix = true;  // ids starts with encode(text[0, prefix))
};

// Encodes text to ids (no BOS/EOS) exactly as Tokenizer::encode does. Not thread-safe: give each
// thread its own, sharing one Tokenizer (its encode is const and thread-safe) and, optionally,
// one SharedSegmentCache.
class CachedEncoder {
 public:
  // `plan` from plan_segmentation(tokenizer.path()); a plan that is not exact encodes whole texts.
  CachedEncoder(const Tokenizer& tokenizer, const SegmentationPlan& plan,
                SharedSegmentCache* shared = nullptr);

  // Text -> ids, equal to tokenizer.encode(text, false, false). Throws what Tokenizer::encode
  // throws.
  std::vector<int32_t> encode(std::string_view text);

  // encode(text), plus the token count of encode(text[0, prefix)) and whether it is a prefix of
  // the whole's ids, without encoding the prefix again (only its last segment, if the text
  // continues it). `prefix` <= text.size(). Throws what Tokenizer::encode throws.
  PrefixEncoding encode_with_prefix(std::string_view text, size_t prefix);

  bool segmented() const { return segmented_; }
  int64_t cache_entries() const { return static_cast<int64_t>(cache_.size()); }

 private:
  struct Span {
    size_t offset;  // into arena_
    size_t size;
  };

  // Appends the ids of one segment; `first` selects the encoding with SentencePiece's dummy prefix.
  void append_segment(std::string_view segment, bool first, std::vector<int32_t>& out);

  const Tokenizer* tokenizer_;
  bool segmented_;
  SharedSegmentCache* shared_;
  std::unordered_map<std::string, Span> cache_;  // key: one flag byte ('F'irst/'L'ater) + segment
  std::vector<int32_t> arena_;                   // the cached ids, back to back
  std::string key_;                              // scratch for building keys
  std::vector<int32_t> scratch_;
};

}  // namespace llt
