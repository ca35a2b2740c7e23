// Training data from an llt-tokenize directory: the Dataset (all shards, validated), the
// BatchSampler (seeded shuffle per epoch, rank/world slice, optional length grouping, a resumable
// position) and collate() into padded (B, T) tensors with labels.
//
// Labels (DESIGN.md "Shards") sit at the same positions as input_ids, as in Hugging Face: the
// loss compares logits[:, t] with labels[:, t + 1]. A label is -100 (kIgnoreIndex) on a sample's
// first source_length tokens (BOS and the prompt) and on padding.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llt/shards.h"

namespace llt {

// The label of positions that carry no loss (PyTorch's cross_entropy ignore_index).
inline constexpr int64_t kIgnoreIndex = -100;

// What the caller's tokenizer and model require of a dataset; unset fields are not checked.
struct DatasetRequirements {
  std::optional<int64_t> vocab_size;        // the tokenizer's: must equal the shards'
  std::optional<int64_t> model_vocab_size;  // embedding rows: the shards' vocab must fit
  std::optional<int64_t> bos_id;
  std::optional<int64_t> eos_id;
  std::string tokenizer_sha256;  // "" = not checked
};

// One sample, viewing the dataset's memory (valid while the Dataset lives).
struct SampleView {
  const int32_t* ids = nullptr;
  int64_t length = 0;
  int32_t source_length = 0;  // the first source_length tokens are masked in labels
  int64_t source_index = 0;   // the record's index in the source file
};

class Dataset {
 public:
  // Opens `dir` (with manifest.json): checks each shard's sha256, attributes and counts against
  // the manifest, then the manifest against `requirements`. Loads every shard into memory (Alpaca
  // is ~10 MB of ids). Throws InputError naming the file and the mismatch (expected vs found).
  static Dataset open(const std::filesystem::path& dir,
                      const DatasetRequirements& requirements = {});

  int64_t size() const { return data_.size(); }
  int64_t tokens() const { return data_.tokens(); }

  // Sample i, 0 <= i < size(). Throws RuntimeError out of range.
  SampleView sample(int64_t i) const;
  int64_t length(int64_t i) const { return sample(i).length; }

  const Manifest& manifest() const { return manifest_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  Dataset() = default;

  std::filesystem::path dir_;
  Manifest manifest_;
  ShardData data_;  // every shard's samples in manifest order, offsets rebased
};

// How batches are drawn.
struct SamplerOptions {
  int64_t batch_size = 1;
  bool shuffle = true;  // a fresh seeded permutation every epoch
  uint64_t seed = 0;
  int64_t rank = 0;                // this process's slice of every epoch ...
  int64_t world_size = 1;          // ... out of world_size (data parallel)
  bool group_by_length = false;    // sort each mega-batch by length: less padding
  int64_t megabatch_batches = 50;  // batches per mega-batch (Hugging Face's LengthGroupedSampler)
};

// Where a sampler stands: `cursor` batches of `epoch` are consumed (saved with a checkpoint).
struct DataPosition {
  int64_t epoch = 0;
  int64_t cursor = 0;
  bool operator==(const DataPosition& o) const { return epoch == o.epoch && cursor == o.cursor; }
};

// Batches of sample indices for one rank. Each epoch: permute [0, n) (seed, epoch) if shuffle;
// pad to a multiple of world_size by wrapping around (every rank gets the same number of samples,
// as torch's DistributedSampler); take every world_size-th index from `rank`; group by length
// if asked; cut into batches (the last may be smaller). Deterministic for (seed, epoch, rank).
class BatchSampler {
 public:
  // Throws InputError on batch_size < 1, world_size < 1, rank outside [0, world_size) or no
  // lengths.
  BatchSampler(std::vector<int64_t> lengths, const SamplerOptions& options);
  BatchSampler(const Dataset& dataset, const SamplerOptions& options);

  int64_t batches_per_epoch() const;
  int64_t samples_per_epoch() const;  // this rank's, padding included

  // This rank's batches of `epoch`, in order.
  std::vector<std::vector<int64_t>> epoch_batches(int64_t epoch) const;

  // The batch at position(), then advances (from the last batch of an epoch to the next epoch).
  std::vector<int64_t> next();

  DataPosition position() const { return position_; }
  // Resumes at `position`. Throws InputError if the cursor is outside [0, batches_per_epoch()].
  void set_position(const DataPosition& position);

 private:
  std::vector<int64_t> lengths_;
  SamplerOptions options_;
  DataPosition position_;
  int64_t cached_epoch_ = -1;
  std::vector<std::vector<int64_t>> cached_batches_;
};

// A padded batch.
struct Batch {
  at::Tensor input_ids;       // (B, T) int64, right-padded with pad_id; T = longest sample
  at::Tensor labels;          // (B, T) int64: input_ids, kIgnoreIndex on source and padding
  at::Tensor attention_mask;  // (B, T) bool: true on real tokens, false on padding
  int64_t tokens = 0;         // real tokens in the batch
  int64_t label_tokens = 0;   // labels != kIgnoreIndex
};

// Collates samples `indices` of `dataset`. `pad_id` fills padded input positions (they are
// masked and never labelled; LLaMA-2 has no pad token, so callers usually pass eos_id). Throws
// InputError on an empty index list, RuntimeError on an index out of range.
Batch collate(const Dataset& dataset, const std::vector<int64_t>& indices, int64_t pad_id);

}  // namespace llt
