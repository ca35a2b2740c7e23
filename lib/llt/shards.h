// Tokenized datasets on disk (DESIGN.md "Shards"): a directory of HDF5 shards plus manifest.json.
//
// A shard holds n samples: `input_ids` int32 [total_tokens] (the samples back to back), `offsets`
// int64 [n+1] (sample i is input_ids[offsets[i], offsets[i+1])), `source_lengths` int32 [n] (the
// prompt tokens, masked with -100 in labels) and `source_indices` int64 [n] (each sample's record
// index in the source file, so a sample can be traced back after dropped records). Datasets are
// chunked and compressed (shuffle + deflate) with Fletcher-32 checksums. Root attributes tie the
// shard to its tokenizer and source (ShardAttributes) and are checked on open. Files are written
// as *.tmp and renamed when complete; manifest.json is written last, so a directory without one
// is not a finished dataset, and a dataset is the manifest and the shards it names (other shard
// files are leftovers). No HDF5 header is included here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "llt/alpaca.h"

namespace llt {

// Bumped whenever the layout above changes; readers refuse other versions.
inline constexpr int64_t kShardFormatVersion = 1;

// The root attributes of every shard (names as in DESIGN.md; `template_name` is `template`).
struct ShardAttributes {
  int64_t format_version = kShardFormatVersion;
  std::string tokenizer_sha256;  // sha256 of the SentencePiece .model file
  int64_t vocab_size = 0;        // of that tokenizer
  int64_t bos_id = -1;
  int64_t eos_id = -1;
  std::string template_name = "alpaca";  // the prompt template: stanford_alpaca's PROMPT_DICT
  int64_t max_len = 0;                   // samples were cut to this many tokens
  std::string source_sha256;             // sha256 of the input JSON/JSONL file
  int64_t first_index = 0;               // source record index of the shard's first sample
};

// The arrays of one shard, in memory.
struct ShardData {
  std::vector<int32_t> input_ids;       // [total_tokens]
  std::vector<int64_t> offsets{0};      // [n + 1], offsets[0] == 0
  std::vector<int32_t> source_lengths;  // [n]
  std::vector<int64_t> source_indices;  // [n]

  int64_t size() const { return static_cast<int64_t>(source_lengths.size()); }
  int64_t tokens() const { return static_cast<int64_t>(input_ids.size()); }
  // Appends one sample.
  void add(const std::vector<int32_t>& ids, int32_t source_length, int64_t source_index);
};

struct Shard {
  ShardData data;
  ShardAttributes attributes;
};

// Writes a shard to `path` + ".tmp" and renames it onto `path` (built in memory, then written
// with write_file_atomic). Throws RuntimeError naming the file on an HDF5 or I/O failure (the temp
// file is removed).
void write_shard(const std::filesystem::path& path, const ShardData& data,
                 const ShardAttributes& attributes);

// Reads and checks a shard: every dataset and attribute present with the right type, offsets
// non-decreasing from 0 to total_tokens, 0 < source_length < sample length, ids in
// [0, vocab_size), format_version known. Throws InputError naming the file and what is wrong
// (a truncated or corrupt file, a checksum failure, a missing attribute).
Shard read_shard(const std::filesystem::path& path);

// Samples per length bin (bins of `bin_width` tokens: [0, w), [w, 2w), ...).
struct LengthHistogram {
  int64_t bin_width = 32;
  std::vector<int64_t> counts;
  int64_t min = 0, max = 0;  // shortest and longest sample, in tokens
  void add(int64_t length);
};

// One shard as the manifest lists it.
struct ManifestShard {
  std::string file;  // relative to the dataset directory, e.g. "shard-g1-00000.h5"
  int64_t samples = 0;
  int64_t tokens = 0;
  int64_t first_index = 0;
  std::string sha256;  // of the finished file
};

// manifest.json: what the dataset holds and how it was made. JSON keys are the field names.
struct Manifest {
  int64_t format_version = kShardFormatVersion;
  int64_t generation = 0;         // the run that wrote it (shard names); 0: before generations
  ShardAttributes attributes;     // shared by every shard (first_index aside)
  std::string input;              // the source file as given
  std::string input_format;       // "json" | "jsonl"
  std::string tokenizer;          // the tokenizer file as given
  std::string split;              // --split NAME, or "" for the whole selection
  int64_t start = 0, end = 0;     // source records [start, end) were selected
  int64_t records = 0;            // end - start
  int64_t samples = 0;            // samples written
  int64_t tokens = 0;             // tokens written (all samples)
  int64_t source_tokens = 0;      // of which masked prompt tokens (BOS included)
  int64_t label_tokens = 0;       // of which label tokens (tokens - source_tokens)
  int64_t truncated = 0;          // samples cut to max_len (kept)
  int64_t dropped_no_label = 0;   // samples with no label token left after the cut (dropped)
  int64_t prompt_not_prefix = 0;  // samples whose full tokens do not start with the prompt's
  int64_t skipped_bad_records = 0;
  std::vector<BadRecord> bad_records;  // the skipped ones (--on-bad-record skip)
  LengthHistogram length_histogram;
  std::string command_line;
  std::vector<ManifestShard> shards;
};

// The text of manifest.json.
std::string manifest_json(const Manifest& manifest);

// The identity of a dataset's samples: sha256 over what decides them (source and tokenizer
// sha256, template, cut, selected records, counts) and each shard's sha256 in order; not over
// shard file names, the generation, paths as typed or the command line. Tokenizing the same
// records again with the same settings gives the same value (what a resume checks).
std::string samples_sha256(const Manifest& manifest);

// Writes `dir`/manifest.json atomically (replacing an existing one). Throws RuntimeError on I/O.
void write_manifest(const std::filesystem::path& dir, const Manifest& manifest);

// Reads `dir`/manifest.json. Throws InputError naming the file and key when it is missing,
// not JSON, a key is missing or of the wrong type (`generation` may be missing: 0), or a shard
// is listed twice or its path leaves `dir` (absolute, or through "..").
Manifest read_manifest(const std::filesystem::path& dir);

// The file name of shard `index` written by run `generation`: "shard-g3-00000.h5".
std::string shard_file_name(int64_t generation, int64_t index);

// The generation in a shard file name llt writes, or its temp file ("shard-g3-00000.h5[.tmp]" ->
// 3; "shard-00000.h5", named before generations -> 0); -1 for any other name (a user's file).
int64_t shard_file_generation(const std::string& name);

}  // namespace llt
