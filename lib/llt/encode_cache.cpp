#include "llt/encode_cache.h"

#include <algorithm>
#include <mutex>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/utf8.h"

namespace llt {
namespace {

// The escaped space SentencePiece writes into pieces: U+2581 LOWER ONE EIGHTH BLOCK.
constexpr std::string_view kMetaSpace = "\xE2\x96\x81";

// Caps the cache so a huge corpus cannot grow it without bound (about 100 MB of ids at most).
constexpr size_t kMaxCacheEntries = size_t{1} << 20;
// Locks of the shared cache: enough that threads rarely wait on one another.
constexpr size_t kSharedShards = 64;

// A minimal protobuf wire-format reader: just what is needed to read a few fields of
// sentencepiece_model.proto (field numbers from that file, SentencePiece 0.1.9x).
class ProtoReader {
 public:
  ProtoReader(std::string_view bytes, const std::string& file) : bytes_(bytes), file_(file) {}

  bool done() const { return pos_ >= bytes_.size(); }

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (done()) fail("truncated varint");
      const auto byte = static_cast<uint8_t>(bytes_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    fail("varint longer than 10 bytes");
    return 0;
  }

  // Reads a tag; returns the field number and sets `wire_type`.
  uint32_t tag(uint32_t& wire_type) {
    const uint64_t t = varint();
    wire_type = static_cast<uint32_t>(t & 7);
    return static_cast<uint32_t>(t >> 3);
  }

  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > bytes_.size() - pos_) fail("length-delimited field runs past the end");
    const std::string_view out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }

  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0:
        varint();
        return;
      case 1:
        advance(8);
        return;
      case 2:
        bytes();
        return;
      case 5:
        advance(4);
        return;
      default:
        fail("unsupported wire type " + std::to_string(wire_type));
    }
  }

 private:
  void advance(size_t n) {
    if (n > bytes_.size() - pos_) fail("fixed-width field runs past the end");
    pos_ += n;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(file_ + ": not a readable SentencePiece model proto (" + what + " at byte " +
                     std::to_string(pos_) + ")");
  }

  std::string_view bytes_;
  std::string file_;
  size_t pos_ = 0;
};

// The fields of ModelProto that decide whether segmentation is exact.
struct ModelFacts {
  uint64_t model_type = 1;  // TrainerSpec.model_type (3): UNIGRAM = 1 (default), BPE = 2
  bool treat_whitespace_as_suffix = false;  // TrainerSpec (24)
  std::string normalizer_name;              // NormalizerSpec.name (1)
  size_t charsmap_bytes = 0;                // NormalizerSpec.precompiled_charsmap (2)
  bool rule_tsv = false;                    // NormalizerSpec.normalization_rule_tsv (6)
  bool add_dummy_prefix = true;             // NormalizerSpec (3), default true
  bool remove_extra_whitespaces = true;     // NormalizerSpec (4), default true
  bool escape_whitespaces = true;           // NormalizerSpec (5), default true
  int64_t pieces = 0;
  int64_t user_defined_pieces = 0;     // SentencePiece.type (3) == USER_DEFINED (4)
  std::string piece_with_inner_space;  // the first piece with "▁" after another character
};

bool has_inner_meta_space(std::string_view piece) {
  for (size_t pos = piece.find(kMetaSpace, 1); pos != std::string_view::npos;
       pos = piece.find(kMetaSpace, pos + 1)) {
    // "▁" preceded by anything but another "▁" joins a word to the space after it.
    if (pos < kMetaSpace.size() || piece.substr(pos - kMetaSpace.size(), 3) != kMetaSpace) {
      return true;
    }
  }
  return false;
}

void read_piece(ProtoReader in, ModelFacts& facts) {
  std::string_view piece;
  uint64_t type = 1;  // NORMAL
  while (!in.done()) {
    uint32_t wire = 0;
    const uint32_t field = in.tag(wire);
    if (field == 1 && wire == 2) {
      piece = in.bytes();
    } else if (field == 3 && wire == 0) {
      type = in.varint();
    } else {
      in.skip(wire);
    }
  }
  ++facts.pieces;
  if (type == 4) ++facts.user_defined_pieces;
  if (facts.piece_with_inner_space.empty() && has_inner_meta_space(piece)) {
    facts.piece_with_inner_space = std::string(piece);
  }
}

void read_trainer_spec(ProtoReader in, ModelFacts& facts) {
  while (!in.done()) {
    uint32_t wire = 0;
    const uint32_t field = in.tag(wire);
    if (field == 3 && wire == 0) {
      facts.model_type = in.varint();
    } else if (field == 24 && wire == 0) {
      facts.treat_whitespace_as_suffix = in.varint() != 0;
    } else {
      in.skip(wire);
    }
  }
}

void read_normalizer_spec(ProtoReader in, ModelFacts& facts) {
  while (!in.done()) {
    uint32_t wire = 0;
    const uint32_t field = in.tag(wire);
    if (field == 1 && wire == 2) {
      facts.normalizer_name = std::string(in.bytes());
    } else if (field == 2 && wire == 2) {
      facts.charsmap_bytes = in.bytes().size();
    } else if (field == 6 && wire == 2) {
      facts.rule_tsv = !in.bytes().empty();
    } else if (field >= 3 && field <= 5 && wire == 0) {
      const bool value = in.varint() != 0;
      if (field == 3) facts.add_dummy_prefix = value;
      if (field == 4) facts.remove_extra_whitespaces = value;
      if (field == 5) facts.escape_whitespaces = value;
    } else {
      in.skip(wire);
    }
  }
}

ModelFacts read_model_facts(const std::filesystem::path& model_file) {
  const std::string bytes = read_file(model_file);
  const std::string name = model_file.string();
  ProtoReader in(bytes, name);
  ModelFacts facts;
  while (!in.done()) {
    uint32_t wire = 0;
    const uint32_t field = in.tag(wire);
    if (wire == 2 && field >= 1 && field <= 3) {
      const ProtoReader sub(in.bytes(), name);
      if (field == 1) read_piece(sub, facts);
      if (field == 2) read_trainer_spec(sub, facts);
      if (field == 3) read_normalizer_spec(sub, facts);
    } else {
      in.skip(wire);
    }
  }
  if (facts.pieces == 0) throw InputError(name + ": SentencePiece model proto has no pieces");
  return facts;
}

// The length of a space character (' ' or "▁") starting at text[pos], else 0.
size_t space_at(std::string_view text, size_t pos) {
  if (text[pos] == ' ') return 1;
  return text.compare(pos, kMetaSpace.size(), kMetaSpace) == 0 ? kMetaSpace.size() : 0;
}

// Whether text[0, pos) ends with a space character.
bool space_before(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  if (text[pos - 1] == ' ') return true;
  return pos >= kMetaSpace.size() &&
         text.compare(pos - kMetaSpace.size(), kMetaSpace.size(), kMetaSpace) == 0;
}

// The offsets where text's segments start (the first is 0; none for ""): a cut before each run
// of spaces that follows a non-space, except a lone trailing space, kept with the segment before
// it (its rest would be empty, and SentencePiece adds no dummy prefix to "").
void segment_starts(std::string_view text, std::vector<size_t>& starts) {
  starts.clear();
  if (text.empty()) return;
  starts.push_back(0);
  for (size_t pos = 1; pos < text.size(); ++pos) {
    const size_t space = space_at(text, pos);
    if (space == 0 || space_before(text, pos) || pos + space == text.size()) continue;
    starts.push_back(pos);
  }
}

}  // namespace

SegmentationPlan plan_segmentation(const std::filesystem::path& model_file) {
  const ModelFacts f = read_model_facts(model_file);
  SegmentationPlan plan;
  if (f.model_type != 2) {
    plan.reason = "not a BPE model (model_type " + std::to_string(f.model_type) + ")";
  } else if (f.charsmap_bytes > 0 || f.rule_tsv) {
    plan.reason = "normalizer '" + f.normalizer_name + "' rewrites characters";
  } else if (!f.add_dummy_prefix || f.remove_extra_whitespaces || !f.escape_whitespaces ||
             f.treat_whitespace_as_suffix) {
    plan.reason = "whitespace handling differs from LLaMA's (dummy prefix, extra spaces kept)";
  } else if (f.user_defined_pieces > 0) {
    plan.reason = std::to_string(f.user_defined_pieces) + " user-defined pieces";
  } else if (!f.piece_with_inner_space.empty()) {
    plan.reason = "piece '" + f.piece_with_inner_space + "' joins a character to a space";
  } else {
    plan.exact = true;
  }
  return plan;
}

struct SharedSegmentCache::Shard {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>> map;
};

SharedSegmentCache::SharedSegmentCache() : shards_(new Shard[kSharedShards]) {}
SharedSegmentCache::~SharedSegmentCache() = default;

bool SharedSegmentCache::lookup(const std::string& key, std::vector<int32_t>& out) const {
  Shard& shard = shards_[std::hash<std::string>{}(key) % kSharedShards];
  const std::lock_guard<std::mutex> lock(shard.mutex);
  const auto it = shard.map.find(key);
  if (it == shard.map.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void SharedSegmentCache::insert(const std::string& key, const std::vector<int32_t>& ids) {
  Shard& shard = shards_[std::hash<std::string>{}(key) % kSharedShards];
  const std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.map.size() < kMaxCacheEntries / kSharedShards) shard.map.emplace(key, ids);
}

CachedEncoder::CachedEncoder(const Tokenizer& tokenizer, const SegmentationPlan& plan,
                             SharedSegmentCache* shared)
    : tokenizer_(&tokenizer), segmented_(plan.exact), shared_(shared) {}

void CachedEncoder::append_segment(std::string_view segment, bool first,
                                   std::vector<int32_t>& out) {
  key_.assign(1, first ? 'F' : 'L');
  key_.append(segment);
  auto it = cache_.find(key_);
  if (it == cache_.end()) {
    if (cache_.size() >= kMaxCacheEntries) {
      cache_.clear();
      arena_.clear();
    }
    std::vector<int32_t> ids;
    if (shared_ == nullptr || !shared_->lookup(key_, ids)) {
      // A later segment starts with a space character; SentencePiece's dummy prefix stands in
      // for it, so encoding the rest alone gives the ids the segment has inside the whole text.
      const std::string_view text = first ? segment : segment.substr(space_at(segment, 0));
      ids = tokenizer_->encode(std::string(text), false, false);
      if (shared_ != nullptr) shared_->insert(key_, ids);
    }
    it = cache_.emplace(key_, Span{arena_.size(), ids.size()}).first;
    arena_.insert(arena_.end(), ids.begin(), ids.end());
  }
  const int32_t* begin = arena_.data() + it->second.offset;
  out.insert(out.end(), begin, begin + it->second.size);
}

std::vector<int32_t> CachedEncoder::encode(std::string_view text) {
  // Ill-formed UTF-8 goes to SentencePiece whole: the proof above is about characters.
  if (!segmented_ || !is_valid_utf8(text)) {
    return tokenizer_->encode(std::string(text), false, false);
  }
  std::vector<size_t> starts;
  segment_starts(text, starts);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (size_t k = 0; k < starts.size(); ++k) {
    const size_t end = k + 1 < starts.size() ? starts[k + 1] : text.size();
    append_segment(text.substr(starts[k], end - starts[k]), k == 0, ids);
  }
  return ids;
}

PrefixEncoding CachedEncoder::encode_with_prefix(std::string_view text, size_t prefix) {
  PrefixEncoding r;
  prefix = std::min(prefix, text.size());
  const bool mid_character =
      prefix < text.size() && (static_cast<uint8_t>(text[prefix]) & 0xC0) == 0x80;
  if (!segmented_ || mid_character || !is_valid_utf8(text)) {
    r.ids = encode(text);
    const std::vector<int32_t> head = encode(text.substr(0, prefix));
    r.prefix_tokens = static_cast<int64_t>(head.size());
    r.prefix_is_prefix =
        head.size() <= r.ids.size() && std::equal(head.begin(), head.end(), r.ids.begin());
    return r;
  }
  // The whole text, segment by segment, remembering where each segment's ids start.
  std::vector<size_t> starts, token_starts;
  segment_starts(text, starts);
  r.ids.reserve(text.size() / 3 + 4);
  for (size_t k = 0; k < starts.size(); ++k) {
    const size_t end = k + 1 < starts.size() ? starts[k + 1] : text.size();
    token_starts.push_back(r.ids.size());
    append_segment(text.substr(starts[k], end - starts[k]), k == 0, r.ids);
  }
  token_starts.push_back(r.ids.size());
  // The prefix's segments: every one but the last is a segment of the whole (a cut in the prefix
  // is a cut in the whole), so only a last segment that the text continues needs encoding.
  std::vector<size_t> head_starts;
  segment_starts(text.substr(0, prefix), head_starts);
  size_t j = 0;
  for (size_t i = 0; i < head_starts.size(); ++i) {
    const size_t begin = head_starts[i];
    const size_t end = i + 1 < head_starts.size() ? head_starts[i + 1] : prefix;
    while (j < starts.size() && starts[j] < begin) ++j;
    const bool same_start = j < starts.size() && starts[j] == begin;
    const size_t whole_end = j + 1 < starts.size() ? starts[j + 1] : text.size();
    if (same_start && whole_end == end) {
      r.prefix_tokens += static_cast<int64_t>(token_starts[j + 1] - token_starts[j]);
      continue;
    }
    scratch_.clear();
    append_segment(text.substr(begin, end - begin), begin == 0, scratch_);
    r.prefix_tokens += static_cast<int64_t>(scratch_.size());
    const size_t at = same_start ? token_starts[j] : r.ids.size();
    r.prefix_is_prefix = r.prefix_is_prefix && same_start && at + scratch_.size() <= r.ids.size() &&
                         std::equal(scratch_.begin(), scratch_.end(), r.ids.begin() + at);
  }
  return r;
}

}  // namespace llt
