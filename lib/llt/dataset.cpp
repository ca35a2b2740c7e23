#include "llt/dataset.h"

#include <algorithm>
#include <numeric>
#include <random>

#include <ATen/ATen.h>

#include "llt/errors.h"
#include "llt/sha256.h"

namespace llt {
namespace fs = std::filesystem;

namespace {

void expect_equal(const std::string& where, const std::string& what, int64_t expected,
                  int64_t found, const std::string& hint = "") {
  if (expected != found) {
    throw InputError(where + ": " + what + " is " + std::to_string(found) + ", expected " +
                     std::to_string(expected) + hint);
  }
}

void expect_equal(const std::string& where, const std::string& what, const std::string& expected,
                  const std::string& found, const std::string& hint = "") {
  if (expected != found) {
    throw InputError(where + ": " + what + " is '" + found + "', expected '" + expected + "'" +
                     hint);
  }
}

// A shard's attributes must repeat the manifest's (first_index is per shard).
void check_attributes(const std::string& where, const ShardAttributes& shard,
                      const ShardAttributes& manifest, const ManifestShard& entry) {
  const std::string hint = " (manifest.json)";
  expect_equal(where, "attribute 'tokenizer_sha256'", manifest.tokenizer_sha256,
               shard.tokenizer_sha256, hint);
  expect_equal(where, "attribute 'vocab_size'", manifest.vocab_size, shard.vocab_size, hint);
  expect_equal(where, "attribute 'bos_id'", manifest.bos_id, shard.bos_id, hint);
  expect_equal(where, "attribute 'eos_id'", manifest.eos_id, shard.eos_id, hint);
  expect_equal(where, "attribute 'template'", manifest.template_name, shard.template_name, hint);
  expect_equal(where, "attribute 'max_len'", manifest.max_len, shard.max_len, hint);
  expect_equal(where, "attribute 'source_sha256'", manifest.source_sha256, shard.source_sha256,
               hint);
  expect_equal(where, "attribute 'first_index'", entry.first_index, shard.first_index, hint);
}

// The dataset against what the caller's tokenizer and model need.
void check_requirements(const std::string& where, const ShardAttributes& a,
                        const DatasetRequirements& r) {
  const std::string hint = " (from the tokenizer/model in use; re-run llt-tokenize with it)";
  if (r.vocab_size) expect_equal(where, "vocab_size", *r.vocab_size, a.vocab_size, hint);
  if (r.bos_id) expect_equal(where, "bos_id", *r.bos_id, a.bos_id, hint);
  if (r.eos_id) expect_equal(where, "eos_id", *r.eos_id, a.eos_id, hint);
  if (!r.tokenizer_sha256.empty()) {
    expect_equal(where, "tokenizer_sha256", r.tokenizer_sha256, a.tokenizer_sha256, hint);
  }
  if (r.model_vocab_size && a.vocab_size > *r.model_vocab_size) {
    throw InputError(where + ": vocab_size " + std::to_string(a.vocab_size) +
                     " does not fit the model's " + std::to_string(*r.model_vocab_size) +
                     " embedding rows");
  }
}

void append(ShardData& all, const ShardData& part) {
  const int64_t base = all.tokens();
  all.input_ids.insert(all.input_ids.end(), part.input_ids.begin(), part.input_ids.end());
  for (size_t i = 1; i < part.offsets.size(); ++i) all.offsets.push_back(base + part.offsets[i]);
  all.source_lengths.insert(all.source_lengths.end(), part.source_lengths.begin(),
                            part.source_lengths.end());
  all.source_indices.insert(all.source_indices.end(), part.source_indices.begin(),
                            part.source_indices.end());
}

// splitmix64 (Steele, Lea, Flood 2014): a well-mixed 64-bit seed from (seed, epoch).
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

Dataset Dataset::open(const fs::path& dir, const DatasetRequirements& requirements) {
  Dataset ds;
  ds.dir_ = dir;
  ds.manifest_ = read_manifest(dir);
  const Manifest& m = ds.manifest_;
  const std::string manifest_file = (dir / "manifest.json").string();
  expect_equal(manifest_file, "format_version", kShardFormatVersion, m.format_version,
               " (written by another llt version)");
  check_requirements(manifest_file, m.attributes, requirements);
  if (m.shards.empty() || m.samples == 0) {
    throw InputError(manifest_file + ": the dataset has no samples");
  }
  for (const ManifestShard& entry : m.shards) {
    const fs::path path = dir / entry.file;
    const std::string where = path.string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      throw InputError(where + ": missing (listed in " + manifest_file + ")");
    }
    const std::string sha = sha256_file(path);
    if (sha != entry.sha256) {
      throw InputError(where + ": sha256 " + sha + " differs from manifest.json's " + entry.sha256 +
                       " (the shard is corrupt, truncated or was replaced)");
    }
    const Shard shard = read_shard(path);
    check_attributes(where, shard.attributes, m.attributes, entry);
    expect_equal(where, "sample count", entry.samples, shard.data.size(), " (manifest.json)");
    expect_equal(where, "token count", entry.tokens, shard.data.tokens(), " (manifest.json)");
    append(ds.data_, shard.data);
  }
  expect_equal(manifest_file, "the shards' total sample count", m.samples, ds.data_.size());
  expect_equal(manifest_file, "the shards' total token count", m.tokens, ds.data_.tokens());
  return ds;
}

SampleView Dataset::sample(int64_t i) const {
  if (i < 0 || i >= size()) {
    throw RuntimeError(dir_.string() + ": sample index " + std::to_string(i) + " is outside [0, " +
                       std::to_string(size()) + ")");
  }
  const int64_t begin = data_.offsets[i];
  return {data_.input_ids.data() + begin, data_.offsets[i + 1] - begin, data_.source_lengths[i],
          data_.source_indices[i]};
}

// ----- BatchSampler

BatchSampler::BatchSampler(std::vector<int64_t> lengths, const SamplerOptions& options)
    : lengths_(std::move(lengths)), options_(options) {
  const auto& o = options_;
  if (o.batch_size < 1)
    throw InputError("batch size must be >= 1, got " + std::to_string(o.batch_size));
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    throw InputError("data-parallel rank " + std::to_string(o.rank) + " is outside [0, " +
                     std::to_string(o.world_size) + ")");
  }
  if (o.megabatch_batches < 1) throw InputError("megabatch_batches must be >= 1");
  if (lengths_.empty()) throw InputError("cannot sample batches from an empty dataset");
}

BatchSampler::BatchSampler(const Dataset& dataset, const SamplerOptions& options)
    : BatchSampler(
          [&] {
            std::vector<int64_t> lengths(dataset.size());
            for (int64_t i = 0; i < dataset.size(); ++i) lengths[i] = dataset.length(i);
            return lengths;
          }(),
          options) {}

int64_t BatchSampler::samples_per_epoch() const {
  const auto n = static_cast<int64_t>(lengths_.size());
  return (n + options_.world_size - 1) / options_.world_size;
}

int64_t BatchSampler::batches_per_epoch() const {
  return (samples_per_epoch() + options_.batch_size - 1) / options_.batch_size;
}

std::vector<std::vector<int64_t>> BatchSampler::epoch_batches(int64_t epoch) const {
  const auto n = static_cast<int64_t>(lengths_.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  if (options_.shuffle) {
    // Fisher-Yates with mt19937_64, whose output the C++ standard fixes: the same permutation
    // on every platform (std::shuffle's algorithm is implementation-defined).
    std::mt19937_64 rng(mix(options_.seed ^ mix(static_cast<uint64_t>(epoch))));
    for (int64_t i = n - 1; i > 0; --i) {
      std::swap(order[i], order[static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1))]);
    }
  }
  // This rank's slice of the order, wrapped around to samples_per_epoch() * world_size.
  std::vector<int64_t> mine;
  mine.reserve(samples_per_epoch());
  for (int64_t k = options_.rank; k < samples_per_epoch() * options_.world_size;
       k += options_.world_size) {
    mine.push_back(order[k % n]);
  }
  if (options_.group_by_length) {
    const int64_t mega = options_.batch_size * options_.megabatch_batches;
    for (int64_t begin = 0; begin < static_cast<int64_t>(mine.size()); begin += mega) {
      const auto first = mine.begin() + begin;
      const auto last = mine.begin() + std::min<int64_t>(begin + mega, mine.size());
      std::stable_sort(first, last,
                       [&](int64_t a, int64_t b) { return lengths_[a] > lengths_[b]; });
    }
  }
  std::vector<std::vector<int64_t>> batches;
  for (size_t begin = 0; begin < mine.size(); begin += options_.batch_size) {
    const size_t end = std::min(mine.size(), begin + static_cast<size_t>(options_.batch_size));
    batches.emplace_back(mine.begin() + begin, mine.begin() + end);
  }
  return batches;
}

std::vector<int64_t> BatchSampler::next() {
  if (position_.cursor >= batches_per_epoch()) position_ = {position_.epoch + 1, 0};
  if (cached_epoch_ != position_.epoch) {
    cached_batches_ = epoch_batches(position_.epoch);
    cached_epoch_ = position_.epoch;
  }
  return cached_batches_[position_.cursor++];
}

void BatchSampler::set_position(const DataPosition& position) {
  if (position.epoch < 0 || position.cursor < 0 || position.cursor > batches_per_epoch()) {
    throw InputError("data position (epoch " + std::to_string(position.epoch) + ", cursor " +
                     std::to_string(position.cursor) + ") is outside this sampler's epoch of " +
                     std::to_string(batches_per_epoch()) +
                     " batches (another dataset or batch size?)");
  }
  position_ = position;
}

// ----- collate

Batch collate(const Dataset& dataset, const std::vector<int64_t>& indices, int64_t pad_id) {
  if (indices.empty()) throw InputError("collate: empty batch");
  std::vector<SampleView> samples;
  samples.reserve(indices.size());
  int64_t longest = 0;
  for (const int64_t i : indices) {
    samples.push_back(dataset.sample(i));
    longest = std::max(longest, samples.back().length);
  }
  const auto batch = static_cast<int64_t>(samples.size());
  Batch out;
  out.input_ids = at::full({batch, longest}, pad_id, at::kLong);
  out.labels = at::full({batch, longest}, kIgnoreIndex, at::kLong);
  out.attention_mask = at::zeros({batch, longest}, at::kBool);
  int64_t* ids = out.input_ids.data_ptr<int64_t>();
  int64_t* labels = out.labels.data_ptr<int64_t>();
  bool* mask = out.attention_mask.data_ptr<bool>();
  for (int64_t b = 0; b < batch; ++b) {
    const SampleView& s = samples[b];
    for (int64_t t = 0; t < s.length; ++t) {
      ids[b * longest + t] = s.ids[t];
      mask[b * longest + t] = true;
      if (t >= s.source_length) labels[b * longest + t] = s.ids[t];
    }
    out.tokens += s.length;
    out.label_tokens += s.length - s.source_length;
  }
  return out;
}

}  // namespace llt
