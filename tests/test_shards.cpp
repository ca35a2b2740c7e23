// HDF5 shards and manifest.json (lib/llt/shards): round trips, a shard written by h5py (an
// independent writer, tests/assets/alpaca/README.md), and clear errors on corrupt, truncated or
// malformed files.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <hdf5.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/shards.h"

#include "test_support.h"

namespace {

using llt::testing::expect_input_error;
using llt::testing::fresh_dir;

namespace fs = std::filesystem;

llt::ShardAttributes attributes() {
  llt::ShardAttributes a;
  a.tokenizer_sha256 = std::string(64, 'a');
  a.vocab_size = 32000;
  a.bos_id = 1;
  a.eos_id = 2;
  a.max_len = 512;
  a.source_sha256 = std::string(64, 'b');
  a.first_index = 7;
  return a;
}

// Three samples with varied lengths; ids spread over the vocabulary (large ones included).
llt::ShardData sample_data() {
  llt::ShardData d;
  d.add({1, 100, 200, 31999, 2}, 3, 7);
  d.add({1, 5, 2}, 1, 9);
  std::vector<int32_t> long_ids(500);
  for (size_t i = 0; i < long_ids.size(); ++i) long_ids[i] = static_cast<int32_t>(i * 61 % 32000);
  d.add(long_ids, 499, 12);
  return d;
}

TEST(Shards, WriteThenReadPreservesEverything) {
  const auto dir = fresh_dir("roundtrip");
  const auto path = dir / "shard-00000.h5";
  const llt::ShardData data = sample_data();
  llt::write_shard(path, data, attributes());
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  const llt::Shard s = llt::read_shard(path);
  EXPECT_EQ(s.data.input_ids, data.input_ids);
  EXPECT_EQ(s.data.offsets, (std::vector<int64_t>{0, 5, 8, 508}));
  EXPECT_EQ(s.data.source_lengths, (std::vector<int32_t>{3, 1, 499}));
  EXPECT_EQ(s.data.source_indices, (std::vector<int64_t>{7, 9, 12}));
  const auto a = attributes();
  EXPECT_EQ(s.attributes.format_version, llt::kShardFormatVersion);
  EXPECT_EQ(s.attributes.tokenizer_sha256, a.tokenizer_sha256);
  EXPECT_EQ(s.attributes.vocab_size, 32000);
  EXPECT_EQ(s.attributes.bos_id, 1);
  EXPECT_EQ(s.attributes.eos_id, 2);
  EXPECT_EQ(s.attributes.template_name, "alpaca");
  EXPECT_EQ(s.attributes.max_len, 512);
  EXPECT_EQ(s.attributes.source_sha256, a.source_sha256);
  EXPECT_EQ(s.attributes.first_index, 7);
}

TEST(Shards, SameContentSameBytes) {
  // No timestamps in the file: reruns (and other thread counts) give identical shards.
  const auto dir = fresh_dir("bytes");
  llt::write_shard(dir / "a.h5", sample_data(), attributes());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // HDF5 times have 1 s resolution
  llt::write_shard(dir / "b.h5", sample_data(), attributes());
  EXPECT_EQ(llt::read_file(dir / "a.h5"), llt::read_file(dir / "b.h5"));
}

TEST(Shards, ReadsAShardWrittenByH5py) {
  const fs::path assets = LLT_TEST_ASSETS;
  const auto goldens = nlohmann::json::parse(llt::read_file(assets / "alpaca/goldens.json"));
  const llt::Shard s = llt::read_shard(assets / "alpaca/h5py_shard.h5");
  const auto& samples = goldens["samples"];
  ASSERT_EQ(s.data.size(), static_cast<int64_t>(samples.size()));
  for (size_t i = 0; i < samples.size(); ++i) {
    const std::vector<int32_t> ids(s.data.input_ids.begin() + s.data.offsets[i],
                                   s.data.input_ids.begin() + s.data.offsets[i + 1]);
    EXPECT_EQ(ids, samples[i]["ids"].get<std::vector<int32_t>>()) << i;
    EXPECT_EQ(s.data.source_lengths[i], samples[i]["source_length"].get<int32_t>());
    EXPECT_EQ(s.data.source_indices[i], samples[i]["index"].get<int64_t>());
  }
  EXPECT_EQ(s.attributes.tokenizer_sha256, goldens["tokenizer_sha256"].get<std::string>());
  EXPECT_EQ(s.attributes.source_sha256, goldens["input_sha256"].get<std::string>());
  EXPECT_EQ(s.attributes.template_name, "alpaca");
}

TEST(Shards, TruncatedShardIsAClearError) {
  const auto dir = fresh_dir("truncated");
  const auto path = dir / "shard.h5";
  llt::write_shard(path, sample_data(), attributes());
  const std::string bytes = llt::read_file(path);
  for (const size_t keep : {bytes.size() - 100, bytes.size() / 2, size_t{100}, size_t{0}}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), keep);
    expect_input_error([&] { llt::read_shard(path); }, {path.string()});
  }
}

// The file offset and size of a dataset's first chunk (HDF5 >= 1.10.5).
std::pair<haddr_t, hsize_t> first_chunk(const fs::path& path, const char* dataset) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t ds = H5Dopen2(file, dataset, H5P_DEFAULT);
  hsize_t offset[1] = {0};
  unsigned mask = 0;
  haddr_t addr = 0;
  hsize_t size = 0;
  const hid_t space = H5Dget_space(ds);
  EXPECT_GE(H5Dget_chunk_info(ds, space, 0, offset, &mask, &addr, &size), 0);
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(file);
  return {addr, size};
}

TEST(Shards, CorruptChunkFailsItsChecksum) {
  const auto dir = fresh_dir("corrupt");
  const auto path = dir / "shard.h5";
  llt::write_shard(path, sample_data(), attributes());
  for (const char* dataset : {"input_ids", "source_lengths"}) {
    llt::write_shard(path, sample_data(), attributes());
    const auto [addr, size] = first_chunk(path, dataset);
    ASSERT_GT(size, 8u);
    std::string bytes = llt::read_file(path);
    ASSERT_LE(addr + size, bytes.size());
    // Flip bytes inside the compressed chunk; its Fletcher-32 checksum no longer matches.
    for (size_t i = addr + size / 2; i < addr + size / 2 + 4; ++i) bytes[i] ^= 0x5A;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    expect_input_error([&] { llt::read_shard(path); },
                       {path.string(), std::string("dataset '") + dataset, "corrupt"});
  }
}

TEST(Shards, NotHdf5OrMissingIsAClearError) {
  const auto dir = fresh_dir("garbage");
  std::ofstream(dir / "garbage.h5") << "this is not an HDF5 file";
  expect_input_error([&] { llt::read_shard(dir / "garbage.h5"); }, {"garbage.h5", "not an HDF5"});
  expect_input_error([&] { llt::read_shard(dir / "absent.h5"); }, {"absent.h5", "no such"});
}

// Deletes an attribute or dataset from a finished shard with the HDF5 API.
void remove_object(const fs::path& path, const char* name, bool attribute) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  if (attribute) {
    EXPECT_GE(H5Adelete(file, name), 0);
  } else {
    EXPECT_GE(H5Ldelete(file, name, H5P_DEFAULT), 0);
  }
  H5Fclose(file);
}

TEST(Shards, MissingAttributeOrDatasetIsNamed) {
  const auto dir = fresh_dir("missing");
  for (const char* attr : {"format_version", "tokenizer_sha256", "vocab_size", "bos_id", "eos_id",
                           "template", "max_len", "source_sha256", "first_index"}) {
    const auto path = dir / (std::string(attr) + ".h5");
    llt::write_shard(path, sample_data(), attributes());
    remove_object(path, attr, /*attribute=*/true);
    expect_input_error([&] { llt::read_shard(path); }, {"missing attribute '" + std::string(attr)});
  }
  for (const char* ds : {"input_ids", "offsets", "source_lengths", "source_indices"}) {
    const auto path = dir / (std::string(ds) + ".h5");
    llt::write_shard(path, sample_data(), attributes());
    remove_object(path, ds, /*attribute=*/false);
    expect_input_error([&] { llt::read_shard(path); }, {"missing dataset '" + std::string(ds)});
  }
}

TEST(Shards, InconsistentContentIsRejected) {
  const auto dir = fresh_dir("inconsistent");
  const auto path = dir / "shard.h5";
  {
    auto d = sample_data();
    d.input_ids[3] = 32000;  // outside the vocabulary
    llt::write_shard(path, d, attributes());
    expect_input_error([&] { llt::read_shard(path); }, {"input_ids[3] = 32000", "vocabulary"});
  }
  {
    auto d = sample_data();
    d.source_lengths[1] = 3;  // the whole sample masked: no label token
    llt::write_shard(path, d, attributes());
    expect_input_error([&] { llt::read_shard(path); }, {"sample 1", "source_length 3"});
  }
  {
    auto d = sample_data();
    d.offsets.back() = 400;  // offsets do not end at the token count
    llt::write_shard(path, d, attributes());
    expect_input_error([&] { llt::read_shard(path); }, {"offsets"});
  }
  {
    auto a = attributes();
    a.max_len = 100;  // the 500-token sample is longer
    llt::write_shard(path, sample_data(), a);
    expect_input_error([&] { llt::read_shard(path); }, {"sample 2", "max_len 100"});
  }
  {
    auto a = attributes();
    a.format_version = 99;
    llt::write_shard(path, sample_data(), a);
    expect_input_error([&] { llt::read_shard(path); }, {"format_version", "99"});
  }
  {
    auto a = attributes();
    a.first_index = 3;  // the first sample came from record 7
    llt::write_shard(path, sample_data(), a);
    expect_input_error([&] { llt::read_shard(path); }, {"first_index"});
  }
}

TEST(Manifest, WriteThenReadPreservesEverything) {
  const auto dir = fresh_dir("manifest");
  llt::Manifest m;
  m.attributes = attributes();
  m.input = "in.json";
  m.input_format = "jsonl";
  m.tokenizer = "tok.model";
  m.split = "train";
  m.start = 10;
  m.end = 20;
  m.records = 10;
  m.samples = 8;
  m.tokens = 800;
  m.source_tokens = 300;
  m.label_tokens = 500;
  m.truncated = 1;
  m.dropped_no_label = 1;
  m.prompt_not_prefix = 2;
  m.skipped_bad_records = 1;
  m.bad_records = {{13, "output", "empty"}};
  m.length_histogram.add(40);
  m.length_histogram.add(100);
  m.command_line = "llt-tokenize --output 'a b'";
  m.generation = 3;
  m.shards = {{"shard-g3-00000.h5", 8, 800, 10, std::string(64, 'c')}};
  llt::write_manifest(dir, m);
  const llt::Manifest r = llt::read_manifest(dir);
  EXPECT_EQ(r.attributes.tokenizer_sha256, m.attributes.tokenizer_sha256);
  EXPECT_EQ(r.attributes.source_sha256, m.attributes.source_sha256);
  EXPECT_EQ(r.attributes.max_len, 512);
  EXPECT_EQ(r.attributes.template_name, "alpaca");
  EXPECT_EQ(r.input_format, "jsonl");
  EXPECT_EQ(r.split, "train");
  EXPECT_EQ(r.start, 10);
  EXPECT_EQ(r.end, 20);
  EXPECT_EQ(r.samples, 8);
  EXPECT_EQ(r.tokens, 800);
  EXPECT_EQ(r.label_tokens, 500);
  EXPECT_EQ(r.dropped_no_label, 1);
  EXPECT_EQ(r.prompt_not_prefix, 2);
  ASSERT_EQ(r.bad_records.size(), 1u);
  EXPECT_EQ(r.bad_records[0].index, 13);
  EXPECT_EQ(r.bad_records[0].field, "output");
  EXPECT_EQ(r.length_histogram.counts, (std::vector<int64_t>{0, 1, 0, 1}));
  EXPECT_EQ(r.length_histogram.min, 40);
  EXPECT_EQ(r.length_histogram.max, 100);
  EXPECT_EQ(r.command_line, m.command_line);
  ASSERT_EQ(r.shards.size(), 1u);
  EXPECT_EQ(r.generation, 3);
  EXPECT_EQ(r.shards[0].file, "shard-g3-00000.h5");
  EXPECT_EQ(r.shards[0].first_index, 10);
  EXPECT_EQ(r.shards[0].sha256, std::string(64, 'c'));
}

TEST(Manifest, MissingOrMalformedIsAClearError) {
  const auto dir = fresh_dir("manifest_bad");
  expect_input_error([&] { llt::read_manifest(dir); }, {"manifest.json", "no such file"});
  std::ofstream(dir / "manifest.json") << "{\"format_version\": 1";
  expect_input_error([&] { llt::read_manifest(dir); }, {"manifest.json", "not valid JSON"});
  std::ofstream(dir / "manifest.json") << R"({"format_version": "one"})";
  expect_input_error([&] { llt::read_manifest(dir); }, {"format_version", "wrong type"});
  std::ofstream(dir / "manifest.json") << R"({"format_version": 1})";
  expect_input_error([&] { llt::read_manifest(dir); }, {"missing key 'template'"});
  // Not truncated (2.5), not undefined behaviour (1e300; found by fuzz/fuzz_manifest.cpp).
  for (const char* number : {"2.5", "1e300", "9223372036854775808"}) {
    std::ofstream(dir / "manifest.json") << "{\"format_version\": " << number << "}";
    expect_input_error([&] { llt::read_manifest(dir); }, {"format_version", "wrong type"});
  }
}

TEST(Manifest, KeptFuzzInputVocabSize1e300IsRefused) {
  // fuzz/crashes/manifest/ (found by fuzz/fuzz_manifest.cpp): a whole manifest whose vocab_size
  // is 1e300, undefined behaviour in nlohmann's get<int64_t>() before json_holds.
  const auto dir = fresh_dir("manifest_fuzz");
  fs::copy_file(fs::path(LLT_SOURCE_DIR) / "fuzz/crashes/manifest/ub-vocab-size-1e300.json",
                dir / "manifest.json");
  expect_input_error([&] { llt::read_manifest(dir); },
                     {"manifest.json", "'vocab_size'", "wrong type (number)"});
}

TEST(Manifest, KeptFuzzInputNumberBeyondDoubleIsRefused) {
  // fuzz/crashes/manifest/: a manifest holding the number 5e883, which nlohmann throws as
  // out_of_range (not parse_error): it escaped read_manifest as a non-llt exception.
  const auto dir = fresh_dir("manifest_fuzz_overflow");
  fs::copy_file(fs::path(LLT_SOURCE_DIR) / "fuzz/crashes/manifest/number-overflow-5e883.json",
                dir / "manifest.json");
  expect_input_error([&] { llt::read_manifest(dir); },
                     {"manifest.json", "not valid JSON", "number overflow"});
}

// A manifest that names a shard twice (trained twice an epoch) or a file outside the dataset
// directory (issue 15, item 7) is refused naming manifest.json and the field.
TEST(Manifest, ShardListedTwiceOrOutsideTheDirectoryIsRefused) {
  const auto dir = fresh_dir("manifest_shards");
  llt::Manifest m;
  m.attributes = attributes();
  const llt::ManifestShard a{"shard-g1-00000.h5", 3, 508, 7, std::string(64, 'c')};
  auto with_files = [&](const std::vector<std::string>& files) {
    m.shards.clear();
    for (const auto& f : files) {
      m.shards.push_back(a);
      m.shards.back().file = f;
    }
    llt::write_manifest(dir, m);
  };
  with_files({"shard-g1-00000.h5", "shard-g1-00001.h5", "sub/../shard-g1-00002.h5"});
  EXPECT_EQ(llt::read_manifest(dir).shards.size(), 3u);
  const struct {
    std::vector<std::string> files;
    std::string needle;
  } cases[] = {
      {{"shard-g1-00000.h5", "shard-g1-00000.h5"}, "listed before"},
      {{"shard-g1-00000.h5", "./shard-g1-00000.h5"}, "listed before"},
      {{"../other/shard-g1-00000.h5"}, "inside the dataset directory"},
      {{"sub/../../shard-g1-00000.h5"}, "inside the dataset directory"},
      {{"/etc/passwd"}, "inside the dataset directory"},
      {{""}, "inside the dataset directory"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.files.back());
    with_files(c.files);
    const std::string key = "shards[" + std::to_string(c.files.size() - 1) + "].file";
    expect_input_error([&] { llt::read_manifest(dir); },
                       {(dir / "manifest.json").string(), key, c.needle});
  }
}

TEST(Shards, FileNames) {
  EXPECT_EQ(llt::shard_file_name(1, 0), "shard-g1-00000.h5");
  EXPECT_EQ(llt::shard_file_name(12, 123), "shard-g12-00123.h5");
  EXPECT_EQ(llt::shard_file_generation("shard-g12-00123.h5"), 12);
  EXPECT_EQ(llt::shard_file_generation("shard-g2-00000.h5.tmp"), 2);
  EXPECT_EQ(llt::shard_file_generation("shard-00007.h5"), 0);  // named before generations
  // The user's files, never taken for llt's.
  for (const char* name : {"shard-notes.txt", "shard-g-00000.h5", "shard-g0-00000.h5",
                           "shard-g1-0000.h5", "shard-g1-00000.h5.bak", "shard-g1x-00000.h5",
                           "myshard-00000.h5", "shard-.h5", "manifest.json"}) {
    EXPECT_EQ(llt::shard_file_generation(name), -1) << name;
  }
}

}  // namespace
