// The dataset (lib/llt/dataset): opening and validating an llt-tokenize directory, the batch
// sampler (seeded shuffle, rank slices, length grouping, resume) and collate (padding, labels
// from source_lengths, attention mask), checked against the Python reference's samples.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "test_support.h"
#include "llt/dataset.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/sha256.h"
#include "llt/tools/tokenize.h"

using namespace llt::tools;  // the tool layer under test

namespace {

using llt::testing::expect_input_error;
using llt::testing::fresh_dir;

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kSource = LLT_SOURCE_DIR;
const fs::path kLlama2 = kSource / "assets/tokenizers/llama2/tokenizer.model";


// Records [0, 280) of the shipped Alpaca sample (284 is the first bad one), tokenized once for
// all tests, in 3 shards.
const fs::path& alpaca_dir() {
  static const fs::path dir = [] {
    const auto d = fresh_dir("alpaca") / "data";
    llt::tools::TokenizeToolOptions o;
    o.tokenizer = kLlama2.string();
    o.output = d.string();
    o.first = 280;
    o.samples_per_shard = 100;
    o.threads = 2;
    llt::tools::run_tokenize(o, "test_dataset");
    return d;
  }();
  return dir;
}

// A copy of the dataset that a test may damage.
fs::path copy_of_dataset(const std::string& name) {
  const auto dir = fresh_dir(name) / "data";
  fs::copy(alpaca_dir(), dir, fs::copy_options::recursive);
  return dir;
}

const json& goldens() {
  static const json g =
      json::parse(llt::read_file(fs::path(LLT_TEST_ASSETS) / "alpaca/goldens.json"));
  return g;
}


// ----- opening

TEST(Dataset, OpensAndGivesTheReferenceSamples) {
  const auto ds = llt::Dataset::open(alpaca_dir());
  EXPECT_EQ(ds.size(), 280);
  EXPECT_EQ(ds.manifest().shards.size(), 3u);
  EXPECT_EQ(ds.tokens(), ds.manifest().tokens);
  int checked = 0;
  for (const auto& g : goldens()["samples"]) {
    const int64_t index = g["index"];
    if (index >= 280) continue;
    const auto s = ds.sample(index);  // no record in [0, 280) was dropped: sample i = record i
    EXPECT_EQ(s.source_index, index);
    EXPECT_EQ(std::vector<int32_t>(s.ids, s.ids + s.length), g["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(s.source_length, g["source_length"].get<int32_t>());
    ++checked;
  }
  EXPECT_GE(checked, 8);
  EXPECT_THROW(ds.sample(280), llt::RuntimeError);
  EXPECT_THROW(ds.sample(-1), llt::RuntimeError);
}

TEST(Dataset, ChecksTheCallersTokenizerAndModel) {
  const auto& dir = alpaca_dir();
  llt::DatasetRequirements ok;
  ok.vocab_size = 32000;
  ok.model_vocab_size = 32000;
  ok.bos_id = 1;
  ok.eos_id = 2;
  ok.tokenizer_sha256 = goldens()["tokenizer_sha256"];
  EXPECT_EQ(llt::Dataset::open(dir, ok).size(), 280);
  auto r = ok;
  r.vocab_size = 512;  // e.g. the stories260K tokenizer
  expect_input_error([&] { llt::Dataset::open(dir, r); }, {"vocab_size is 32000, expected 512"});
  r = ok;
  r.bos_id = 0;
  expect_input_error([&] { llt::Dataset::open(dir, r); }, {"bos_id"});
  r = ok;
  r.eos_id = 3;
  expect_input_error([&] { llt::Dataset::open(dir, r); }, {"eos_id"});
  r = ok;
  r.tokenizer_sha256 = std::string(64, '0');
  expect_input_error([&] { llt::Dataset::open(dir, r); }, {"tokenizer_sha256"});
  r = ok;
  r.model_vocab_size = 512;
  expect_input_error([&] { llt::Dataset::open(dir, r); }, {"does not fit", "512"});
}

TEST(Dataset, CorruptTruncatedOrMissingShardIsAClearError) {
  {
    const auto dir = copy_of_dataset("truncated");
    const auto shard = dir / "shard-g1-00001.h5";
    const std::string bytes = llt::read_file(shard);
    std::ofstream(shard, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size() / 2);
    expect_input_error([&] { llt::Dataset::open(dir); }, {"shard-g1-00001.h5", "sha256"});
  }
  {
    const auto dir = copy_of_dataset("corrupt");
    const auto shard = dir / "shard-g1-00002.h5";
    std::string bytes = llt::read_file(shard);
    bytes[bytes.size() / 2] ^= 1;
    std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
    expect_input_error([&] { llt::Dataset::open(dir); }, {"shard-g1-00002.h5", "corrupt"});
  }
  {
    const auto dir = copy_of_dataset("missing");
    fs::remove(dir / "shard-g1-00000.h5");
    expect_input_error([&] { llt::Dataset::open(dir); }, {"shard-g1-00000.h5", "missing"});
  }
  {
    const auto dir = copy_of_dataset("no_manifest");
    fs::remove(dir / "manifest.json");  // what an interrupted llt-tokenize leaves
    expect_input_error([&] { llt::Dataset::open(dir); }, {"manifest.json", "not a finished"});
  }
}

TEST(Dataset, ShardAttributesMustAgreeWithTheManifest) {
  // A shard from another tokenization (max_len 256) swapped in, with the manifest's sha256
  // updated so that only the attribute check can catch it.
  const auto dir = copy_of_dataset("swapped");
  const auto other = fresh_dir("swapped_other") / "data";
  llt::tools::TokenizeToolOptions o;
  o.tokenizer = kLlama2.string();
  o.output = other.string();
  o.first = 100;
  o.max_len = 256;
  o.threads = 1;
  llt::tools::run_tokenize(o, "other");
  fs::copy_file(other / "shard-g1-00000.h5", dir / "shard-g1-00000.h5",
                fs::copy_options::overwrite_existing);
  auto m = json::parse(llt::read_file(dir / "manifest.json"));
  m["shards"][0]["sha256"] = llt::sha256_file(dir / "shard-g1-00000.h5");
  llt::write_file_atomic(dir / "manifest.json", m.dump(2), /*overwrite=*/true);
  expect_input_error([&] { llt::Dataset::open(dir); }, {"shard-g1-00000.h5", "max_len", "256"});
}

// ----- the sampler

std::vector<int64_t> flatten(const std::vector<std::vector<int64_t>>& batches) {
  std::vector<int64_t> out;
  for (const auto& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

std::vector<int64_t> lengths(int64_t n) {
  std::vector<int64_t> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = 10 + (i * 37) % 101;
  return out;
}

TEST(BatchSampler, EveryEpochIsAPermutationFixedBySeedAndEpoch) {
  llt::SamplerOptions o;
  o.batch_size = 4;
  o.seed = 42;
  const llt::BatchSampler sampler(lengths(103), o);
  EXPECT_EQ(sampler.batches_per_epoch(), 26);  // 25 of 4 and one of 3
  const auto e0 = sampler.epoch_batches(0);
  EXPECT_EQ(e0.size(), 26u);
  EXPECT_EQ(e0.back().size(), 3u);
  auto sorted = flatten(e0);
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 103; ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_EQ(flatten(sampler.epoch_batches(0)), flatten(e0));  // deterministic
  EXPECT_NE(flatten(sampler.epoch_batches(1)), flatten(e0));  // a new order each epoch
  auto other = o;
  other.seed = 43;
  EXPECT_NE(flatten(llt::BatchSampler(lengths(103), other).epoch_batches(0)), flatten(e0));
  auto in_order = o;
  in_order.shuffle = false;
  const auto plain = flatten(llt::BatchSampler(lengths(103), in_order).epoch_batches(5));
  for (int64_t i = 0; i < 103; ++i) EXPECT_EQ(plain[i], i);
}

TEST(BatchSampler, RanksSplitEachEpochEvenly) {
  for (const int64_t n : {100, 103}) {
    std::map<int64_t, int> seen;
    int64_t per_rank = -1;
    for (int64_t rank = 0; rank < 4; ++rank) {
      llt::SamplerOptions o;
      o.batch_size = 3;
      o.seed = 7;
      o.rank = rank;
      o.world_size = 4;
      const llt::BatchSampler sampler(lengths(n), o);
      const auto mine = flatten(sampler.epoch_batches(2));
      if (per_rank < 0) per_rank = static_cast<int64_t>(mine.size());
      EXPECT_EQ(static_cast<int64_t>(mine.size()), per_rank);  // same step count on every rank
      EXPECT_EQ(sampler.samples_per_epoch(), per_rank);
      for (const int64_t i : mine) ++seen[i];
    }
    EXPECT_EQ(per_rank, (n + 3) / 4);
    EXPECT_EQ(static_cast<int64_t>(seen.size()), n);  // every sample on some rank
    int repeats = 0;
    for (const auto& [index, count] : seen) repeats += count - 1;
    EXPECT_EQ(repeats, per_rank * 4 - n);  // padding wraps around, as DistributedSampler
  }
  llt::SamplerOptions bad;
  bad.rank = 2;
  bad.world_size = 2;
  expect_input_error([&] { llt::BatchSampler(lengths(10), bad); }, {"rank 2", "[0, 2)"});
  bad = {};
  bad.batch_size = 0;
  expect_input_error([&] { llt::BatchSampler(lengths(10), bad); }, {"batch size"});
}

TEST(BatchSampler, LengthGroupingSortsEachMegabatch) {
  llt::SamplerOptions o;
  o.batch_size = 4;
  o.seed = 1;
  o.group_by_length = true;
  o.megabatch_batches = 5;  // mega-batches of 20 samples
  const auto lens = lengths(103);
  const llt::BatchSampler grouped(lens, o);
  auto plain_options = o;
  plain_options.group_by_length = false;
  const auto plain = flatten(llt::BatchSampler(lens, plain_options).epoch_batches(0));
  const auto order = flatten(grouped.epoch_batches(0));
  for (size_t begin = 0; begin < order.size(); begin += 20) {
    const size_t end = std::min(order.size(), begin + 20);
    std::multiset<int64_t> a(order.begin() + begin, order.begin() + end);
    std::multiset<int64_t> b(plain.begin() + begin, plain.begin() + end);
    EXPECT_EQ(a, b);  // the same samples, only reordered within the mega-batch
    for (size_t i = begin + 1; i < end; ++i) EXPECT_GE(lens[order[i - 1]], lens[order[i]]);
  }
}

TEST(BatchSampler, ResumesFromASavedPosition) {
  llt::SamplerOptions o;
  o.batch_size = 2;
  o.seed = 3;
  llt::BatchSampler uninterrupted(lengths(11), o);  // 6 batches an epoch
  std::vector<std::vector<int64_t>> expected;
  for (int i = 0; i < 15; ++i) expected.push_back(uninterrupted.next());
  EXPECT_EQ(uninterrupted.position(), (llt::DataPosition{2, 3}));

  llt::BatchSampler first(lengths(11), o);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(first.next(), expected[i]);
  const llt::DataPosition saved = first.position();  // into epoch 1
  EXPECT_EQ(saved, (llt::DataPosition{1, 2}));
  llt::BatchSampler resumed(lengths(11), o);
  resumed.set_position(saved);
  for (int i = 8; i < 15; ++i) EXPECT_EQ(resumed.next(), expected[i]) << "batch " << i;
  EXPECT_EQ(expected[0].size(), 2u);
  EXPECT_EQ(expected[5].size(), 1u);  // the epoch's last, short batch
  expect_input_error([&] { resumed.set_position({0, 7}); }, {"cursor 7", "6 batches"});
}

// ----- collate

TEST(Collate, PadsMasksAndLabelsFromSourceLengths) {
  const auto ds = llt::Dataset::open(alpaca_dir());
  const std::vector<int64_t> indices = {5, 0, 42};  // with input, without, a boundary merge
  const llt::Batch b = llt::collate(ds, indices, /*pad_id=*/2);
  int64_t longest = 0;
  for (const int64_t i : indices) longest = std::max(longest, ds.length(i));
  ASSERT_EQ(b.input_ids.sizes(), (at::IntArrayRef{3, longest}));
  ASSERT_EQ(b.labels.sizes(), (at::IntArrayRef{3, longest}));
  ASSERT_EQ(b.attention_mask.sizes(), (at::IntArrayRef{3, longest}));
  EXPECT_EQ(b.input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(b.labels.scalar_type(), at::kLong);
  EXPECT_EQ(b.attention_mask.scalar_type(), at::kBool);
  std::map<int64_t, json> golden;
  for (const auto& g : goldens()["samples"]) golden[g["index"]] = g;
  int64_t tokens = 0, label_tokens = 0;
  for (size_t row = 0; row < indices.size(); ++row) {
    const auto& g = golden.at(indices[row]);
    const auto ids = g["ids"].get<std::vector<int64_t>>();
    const auto source = g["source_length"].get<int64_t>();
    const auto n = static_cast<int64_t>(ids.size());
    for (int64_t t = 0; t < longest; ++t) {
      const int64_t id = b.input_ids[row][t].item<int64_t>();
      const int64_t label = b.labels[row][t].item<int64_t>();
      const bool mask = b.attention_mask[row][t].item<bool>();
      if (t < n) {
        EXPECT_EQ(id, ids[t]);
        EXPECT_TRUE(mask);
        EXPECT_EQ(label, t < source ? llt::kIgnoreIndex : ids[t]) << "row " << row << " t " << t;
      } else {
        EXPECT_EQ(id, 2);  // padding
        EXPECT_FALSE(mask);
        EXPECT_EQ(label, llt::kIgnoreIndex);
      }
    }
    tokens += n;
    label_tokens += n - source;
  }
  EXPECT_EQ(b.tokens, tokens);
  EXPECT_EQ(b.label_tokens, label_tokens);
  EXPECT_EQ(b.label_tokens, b.labels.ne(llt::kIgnoreIndex).sum().item<int64_t>());
  EXPECT_EQ(b.tokens, b.attention_mask.sum().item<int64_t>());
  // The last label is EOS (no sample here was cut), the first is always masked (BOS).
  EXPECT_EQ(b.labels[1][ds.length(0) - 1].item<int64_t>(), 2);
  EXPECT_EQ(b.labels.select(1, 0).ne(llt::kIgnoreIndex).sum().item<int64_t>(), 0);
  expect_input_error([&] { llt::collate(ds, {}, 2); }, {"empty batch"});
}

TEST(Collate, SingleSampleHasNoPadding) {
  const auto ds = llt::Dataset::open(alpaca_dir());
  const llt::Batch b = llt::collate(ds, {7}, 0);
  EXPECT_EQ(b.input_ids.size(1), ds.length(7));
  EXPECT_TRUE(b.attention_mask.all().item<bool>());
}

}  // namespace
