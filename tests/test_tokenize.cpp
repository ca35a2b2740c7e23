// llt-tokenize (lib/llt/tools/tokenize, alpaca, encode_cache): token ids and source lengths equal
// the stanford_alpaca recipe run in Python (tests/assets/alpaca/README.md), the segment cache
// equals plain SentencePiece, bad input fails cleanly (or is skipped and listed), output does not
// depend on the thread count, and the tool's exit codes.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "llt/alpaca.h"
#include "llt/dataset.h"
#include "llt/encode_cache.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/sha256.h"
#include "llt/shards.h"
#include "llt/tokenizer.h"
#include "llt/tools/tokenize.h"

#include "test_support.h"

using namespace llt::tools;  // the tool layer under test

namespace {

using llt::testing::expect_input_error;
using llt::testing::fresh_dir;

llt::testing::ToolRun run(const std::string& args) {
  return llt::testing::run_tool("llt-tokenize " + args);
}

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kSource = LLT_SOURCE_DIR;
const fs::path kLlama2 = kSource / "assets/tokenizers/llama2/tokenizer.model";
const fs::path kTok512 = kSource / "assets/models/stories260K/tok512.model";
const fs::path kAlpaca = kSource / "assets/data/alpaca/alpaca_data_first_5000.json";

const json& goldens() {
  static const json g =
      json::parse(llt::read_file(fs::path(LLT_TEST_ASSETS) / "alpaca/goldens.json"));
  return g;
}

const llt::Tokenizer& llama2() {
  static const llt::Tokenizer tok = llt::Tokenizer::load(kLlama2);
  return tok;
}

const llt::AlpacaFile& alpaca() {
  static const llt::AlpacaFile file =
      llt::parse_alpaca_records(llt::read_file(kAlpaca), kAlpaca.string());
  return file;
}

llt::tools::TokenizeToolOptions options(const fs::path& output) {
  llt::tools::TokenizeToolOptions o;
  o.tokenizer = kLlama2.string();
  o.output = output.string();
  o.threads = 2;
  return o;
}

// Every shard of a dataset directory, concatenated in manifest order.
llt::ShardData read_all(const fs::path& dir) {
  const llt::Manifest m = llt::read_manifest(dir);
  llt::ShardData all;
  for (const auto& entry : m.shards) {
    const llt::Shard s = llt::read_shard(dir / entry.file);
    const int64_t base = all.tokens();
    all.input_ids.insert(all.input_ids.end(), s.data.input_ids.begin(), s.data.input_ids.end());
    for (size_t i = 1; i < s.data.offsets.size(); ++i)
      all.offsets.push_back(base + s.data.offsets[i]);
    all.source_lengths.insert(all.source_lengths.end(), s.data.source_lengths.begin(),
                              s.data.source_lengths.end());
    all.source_indices.insert(all.source_indices.end(), s.data.source_indices.begin(),
                              s.data.source_indices.end());
  }
  return all;
}

// sha256 of integers as little-endian bytes of `width` bytes (as the golden script packs them).
template <typename T>
std::string digest(const std::vector<T>& values, int width) {
  std::string bytes;
  bytes.reserve(values.size() * width);
  for (const T v : values) {
    const auto u = static_cast<uint64_t>(static_cast<int64_t>(v));
    for (int b = 0; b < width; ++b) bytes.push_back(static_cast<char>((u >> (8 * b)) & 0xFF));
  }
  return llt::sha256_hex(bytes);
}

int count_lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

std::string prompt_of(const llt::AlpacaRecord& r) {
  return llt::format_alpaca_prompt(r.instruction, r.input);
}

// ----- the segment cache

TEST(Segmentation, ExactForLlama2NotForTok512) {
  const auto llama = llt::plan_segmentation(kLlama2);
  EXPECT_TRUE(llama.exact) << llama.reason;
  // tok512 removes extra whitespace (SentencePiece's default), so segments are not independent.
  const auto tok512 = llt::plan_segmentation(kTok512);
  EXPECT_FALSE(tok512.exact);
  EXPECT_NE(tok512.reason.find("whitespace"), std::string::npos) << tok512.reason;
  const auto dir = fresh_dir("proto");
  std::ofstream(dir / "bad.model") << "\xff\xff\xff\xff not a proto";
  expect_input_error([&] { llt::plan_segmentation(dir / "bad.model"); }, {"bad.model"});
}

TEST(Segmentation, CachedEncoderEqualsSentencePieceOnAlpacaAndEdgeCases) {
  const auto& tok = llama2();
  llt::CachedEncoder cached(tok, llt::plan_segmentation(kLlama2));
  ASSERT_TRUE(cached.segmented());
  std::vector<std::string> texts = {"",           " ",
                                    "  ",         "x",
                                    "x ",         " x",
                                    "x  ",        "a b",
                                    "a  b",       "a \t b",
                                    "\u2581",     "a\u2581b",
                                    "a \u2581 b", "x\u2581\u2581 y",
                                    "end\u2581",  "trailing  ",
                                    "\n",         " \n ",
                                    "a\n b",      "😀 🚀",
                                    "中文 分词",  "cafe\u0301 ",
                                    "\u00a0x",    "zero\u200b width"};
  for (const auto& c : json::parse(llt::read_file(
           fs::path(LLT_TEST_ASSETS) / "tokenizer/goldens.json"))["tokenizers"][0]["encode"]) {
    texts.push_back(c["text"].get<std::string>());
  }
  for (const auto& r : alpaca().records) {
    texts.push_back(prompt_of(r));
    texts.push_back(prompt_of(r) + r.output);
  }
  int mismatches = 0;
  for (const auto& text : texts) {
    const auto expected = tok.encode(text, false, false);
    if (cached.encode(text) != expected && ++mismatches <= 5) {
      ADD_FAILURE() << "cached encoding differs for " << json(text).dump();
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << texts.size() << " texts";
  EXPECT_GT(cached.cache_entries(), 1000);  // the cache was used
}

TEST(Segmentation, EncodeWithPrefixEqualsEncodingThePrefixAlone) {
  const auto& tok = llama2();
  llt::SharedSegmentCache shared;
  llt::CachedEncoder cached(tok, llt::plan_segmentation(kLlama2), &shared);
  auto check = [&](const std::string& text, size_t prefix) {
    const auto r = cached.encode_with_prefix(text, prefix);
    const auto whole = tok.encode(text, false, false);
    const auto head = tok.encode(text.substr(0, prefix), false, false);
    const bool is_prefix =
        head.size() <= whole.size() && std::equal(head.begin(), head.end(), whole.begin());
    EXPECT_EQ(r.ids, whole) << json(text).dump() << " prefix " << prefix;
    EXPECT_EQ(r.prefix_tokens, static_cast<int64_t>(head.size()))
        << json(text).dump() << " prefix " << prefix;
    EXPECT_EQ(r.prefix_is_prefix, is_prefix) << json(text).dump() << " prefix " << prefix;
  };
  // Every cut point of short texts with spaces at the edges.
  for (const std::string text : {"a  b", " x y ", "Response:- Im", "ab c\u2581 d ", "  ", "x ",
                                 "caf\u00e9 ok", "one two  three   "}) {
    for (size_t prefix = 0; prefix <= text.size(); ++prefix) check(text, prefix);
  }
  int not_prefix = 0;
  for (const auto& r : alpaca().records) {
    const std::string prompt = prompt_of(r);
    check(prompt + r.output, prompt.size());
    not_prefix += !cached.encode_with_prefix(prompt + r.output, prompt.size()).prefix_is_prefix;
  }
  EXPECT_EQ(not_prefix, static_cast<int>(goldens()["prompt_not_prefix"].size()));
}

TEST(Segmentation, UnsegmentedModelStillEncodesExactly) {
  const auto tok = llt::Tokenizer::load(kTok512);
  llt::CachedEncoder cached(tok, llt::plan_segmentation(kTok512));
  EXPECT_FALSE(cached.segmented());
  for (const std::string text : {"Once upon a time", "a  b", "x ", "  lead"}) {
    EXPECT_EQ(cached.encode(text), tok.encode(text, false, false)) << text;
  }
}

TEST(Tokenizer, EncodeIsThreadSafe) {
  // SentencePiece's Encode is const; llt-tokenize shares one Tokenizer between threads.
  const auto& tok = llama2();
  std::vector<std::string> texts;
  for (size_t i = 0; i < 1000; ++i)
    texts.push_back(prompt_of(alpaca().records[i]) + alpaca().records[i].output);
  std::vector<std::vector<int32_t>> serial;
  for (const auto& t : texts) serial.push_back(tok.encode(t, true, true));
  std::vector<std::vector<std::vector<int32_t>>> parallel(
      4, std::vector<std::vector<int32_t>>(texts.size()));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < texts.size(); ++i) {
        const size_t k = (i * 7 + t * 250) % texts.size();  // different orders per thread
        parallel[t][k] = tok.encode(texts[k], true, true);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(parallel[t], serial) << "thread " << t;
}

// ----- samples against the Python reference

TEST(AlpacaSample, MatchesTheReferenceRecipe) {
  llt::CachedEncoder encoder(llama2(), llt::plan_segmentation(kLlama2));
  int with_input = 0, without_input = 0, not_prefix = 0, truncated = 0;
  for (const auto& g : goldens()["samples"]) {
    const int64_t index = g["index"];
    SCOPED_TRACE("record " + std::to_string(index));
    const auto s = llt::make_alpaca_sample(alpaca().records[index], encoder, 1, 2, 512);
    EXPECT_EQ(s.ids, g["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(s.source_length, g["source_length"].get<int32_t>());
    EXPECT_EQ(s.truncated, g["truncated"].get<bool>());
    EXPECT_EQ(s.prompt_is_prefix, g["prompt_is_prefix"].get<bool>());
    (g["has_input"].get<bool>() ? with_input : without_input)++;
    not_prefix += !s.prompt_is_prefix;
    truncated += s.truncated;
  }
  // The fixture covers both templates, a boundary merge and a cut sample.
  EXPECT_GT(with_input, 0);
  EXPECT_GT(without_input, 0);
  EXPECT_GT(not_prefix, 0);
  EXPECT_GT(truncated, 0);
}

TEST(AlpacaSample, UnicodeAndWhitespaceEdgeCasesMatchTheReference) {
  llt::CachedEncoder encoder(llama2(), llt::plan_segmentation(kLlama2));
  for (const auto& g : goldens()["synthetic"]) {
    const auto& r = g["record"];
    SCOPED_TRACE(r.dump());
    const llt::AlpacaRecord record{r["instruction"], r["input"], r["output"]};
    const auto s = llt::make_alpaca_sample(record, encoder, 1, 2, 512);
    EXPECT_EQ(s.ids, g["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(s.source_length, g["source_length"].get<int32_t>());
  }
}

// A number beyond double's range (1e400) is not JSON to nlohmann, which throws out_of_range, not
// parse_error (fuzz_manifest found it in manifest.json): in a JSON array the file is refused
// naming it, in JSONL that line is a bad record and the others parse.
TEST(AlpacaRecords, NumberBeyondDoubleIsInvalidJson) {
  expect_input_error(
      [] {
        llt::parse_alpaca_records(R"([{"instruction": "a", "input": 1e400, "output": "b"}])",
                                  "big.json");
      },
      {"big.json", "invalid JSON", "number overflow"});
  const auto f = llt::parse_alpaca_records(
      "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n"
      "{\"instruction\": \"a\", \"input\": 1e400, \"output\": \"b\"}\n",
      "big.jsonl");
  ASSERT_EQ(f.records.size(), 2u);
  ASSERT_EQ(f.bad.size(), 1u);
  EXPECT_EQ(f.bad[0].index, 1);
  EXPECT_NE(f.bad[0].reason.find("number overflow"), std::string::npos) << f.bad[0].reason;
  EXPECT_NE(f.bad[0].reason.find("line 2"), std::string::npos) << f.bad[0].reason;
}

TEST(AlpacaSample, PromptsAreStanfordAlpacasTemplates) {
  const auto& dict = goldens()["prompt_dict"];
  const std::string with = dict["prompt_input"];
  const std::string without = dict["prompt_no_input"];
  EXPECT_EQ(llt::format_alpaca_prompt("{instruction}", "{input}"), with);
  EXPECT_EQ(llt::format_alpaca_prompt("{instruction}", ""), without);
}

// ----- the whole tool against the reference

void expect_whole_file(const json& g, const fs::path& dir) {
  const llt::Manifest m = llt::read_manifest(dir);
  EXPECT_EQ(m.records, g["records"].get<int64_t>());
  EXPECT_EQ(m.samples, g["samples"].get<int64_t>());
  EXPECT_EQ(m.tokens, g["tokens"].get<int64_t>());
  EXPECT_EQ(m.source_tokens, g["source_tokens"].get<int64_t>());
  EXPECT_EQ(m.label_tokens, m.tokens - m.source_tokens);
  EXPECT_EQ(m.truncated, g["truncated"].get<int64_t>());
  EXPECT_EQ(m.dropped_no_label, g["dropped_no_label"].get<int64_t>());
  EXPECT_EQ(m.prompt_not_prefix, g["prompt_not_prefix"].get<int64_t>());
  EXPECT_EQ(m.length_histogram.counts, g["length_histogram_counts"].get<std::vector<int64_t>>());
  std::vector<int64_t> bad;
  for (const auto& b : m.bad_records) bad.push_back(b.index);
  EXPECT_EQ(bad, g["bad_records"].get<std::vector<int64_t>>());
  EXPECT_EQ(m.skipped_bad_records, static_cast<int64_t>(bad.size()));
  EXPECT_EQ(m.attributes.source_sha256, goldens()["input_sha256"].get<std::string>());
  EXPECT_EQ(m.attributes.tokenizer_sha256, goldens()["tokenizer_sha256"].get<std::string>());
  const llt::ShardData all = read_all(dir);
  EXPECT_EQ(digest(all.input_ids, 4), g["input_ids_sha256"].get<std::string>());
  EXPECT_EQ(digest(all.offsets, 8), g["offsets_sha256"].get<std::string>());
  EXPECT_EQ(digest(all.source_lengths, 4), g["source_lengths_sha256"].get<std::string>());
  EXPECT_EQ(digest(all.source_indices, 8), g["source_indices_sha256"].get<std::string>());
}

TEST(LltTokenize, AllShippedSamplesMatchTheReference) {
  for (const auto& g : goldens()["whole_file"]) {
    const int64_t max_len = g["max_len"];
    SCOPED_TRACE("max_len " + std::to_string(max_len));
    const auto dir = fresh_dir("whole_" + std::to_string(max_len));
    auto o = options(dir / "out");
    o.on_bad_record = OnBadRecord::kSkip;  // the 4 records with an empty output
    o.max_len = max_len;
    ASSERT_EQ(llt::tools::run_tokenize(o, "test"), 0);
    expect_whole_file(g, dir / "out");
  }
}

TEST(LltTokenize, OutputDoesNotDependOnTheThreadCount) {
  const auto dir = fresh_dir("threads");
  std::vector<fs::path> outs;
  for (const int threads : {1, 3}) {
    auto o = options(dir / ("t" + std::to_string(threads)));
    o.on_bad_record = OnBadRecord::kSkip;
    o.threads = threads;
    o.samples_per_shard = 1500;  // 4 shards
    ASSERT_EQ(llt::tools::run_tokenize(o, "threads " + std::to_string(threads)), 0);
    outs.push_back(o.output);
  }
  const auto m1 = llt::read_manifest(outs[0]);
  const auto m3 = llt::read_manifest(outs[1]);
  ASSERT_EQ(m1.shards.size(), 4u);
  ASSERT_EQ(m3.shards.size(), 4u);
  for (size_t i = 0; i < m1.shards.size(); ++i) {
    EXPECT_EQ(m1.shards[i].sha256, m3.shards[i].sha256);
    EXPECT_EQ(llt::read_file(outs[0] / m1.shards[i].file),
              llt::read_file(outs[1] / m3.shards[i].file));
  }
  auto j1 = json::parse(llt::read_file(outs[0] / "manifest.json"));
  auto j3 = json::parse(llt::read_file(outs[1] / "manifest.json"));
  EXPECT_EQ(j1["command_line"], "threads 1");
  j1.erase("command_line");
  j3.erase("command_line");
  EXPECT_EQ(j1, j3);
}

TEST(LltTokenize, ShardsCarryAttributesAndFirstIndex) {
  const auto dir = fresh_dir("shards");
  auto o = options(dir / "out");
  o.first = 200;
  o.samples_per_shard = 64;
  o.max_len = 256;
  ASSERT_EQ(llt::tools::run_tokenize(o, "test"), 0);
  const auto m = llt::read_manifest(dir / "out");
  ASSERT_EQ(m.shards.size(), 4u);  // 64 + 64 + 64 + 8
  EXPECT_EQ(m.generation, 1);      // the first run in this folder
  int64_t samples = 0;
  for (size_t i = 0; i < m.shards.size(); ++i) {
    const auto s = llt::read_shard(dir / "out" / m.shards[i].file);
    EXPECT_EQ(m.shards[i].file, llt::shard_file_name(1, static_cast<int64_t>(i)));
    EXPECT_EQ(s.attributes.first_index, m.shards[i].first_index);
    EXPECT_EQ(s.attributes.first_index, s.data.source_indices.front());
    EXPECT_EQ(s.attributes.max_len, 256);
    EXPECT_EQ(s.attributes.vocab_size, 32000);
    EXPECT_EQ(s.attributes.bos_id, 1);
    EXPECT_EQ(s.attributes.eos_id, 2);
    EXPECT_EQ(s.attributes.template_name, "alpaca");
    EXPECT_EQ(s.attributes.tokenizer_sha256, llama2().sha256());
    EXPECT_EQ(m.shards[i].sha256, llt::sha256_file(dir / "out" / m.shards[i].file));
    samples += s.data.size();
  }
  EXPECT_EQ(samples, 200);
  EXPECT_FALSE(fs::exists(dir / "out" / "manifest.json.tmp"));
}

// ----- selection

TEST(LltTokenize, SkipAndFirstSelectRecords) {
  const auto dir = fresh_dir("skip");
  auto o = options(dir / "out");
  o.skip = 10;
  o.first = 20;
  ASSERT_EQ(llt::tools::run_tokenize(o, "test"), 0);
  const auto m = llt::read_manifest(dir / "out");
  EXPECT_EQ(m.start, 10);
  EXPECT_EQ(m.end, 30);
  EXPECT_EQ(m.samples, 20);
  const auto all = read_all(dir / "out");
  std::vector<int64_t> expected(20);
  for (int i = 0; i < 20; ++i) expected[i] = 10 + i;
  EXPECT_EQ(all.source_indices, expected);
  // The same records as in a run over everything: sample 0 here is record 10.
  llt::CachedEncoder encoder(llama2(), llt::plan_segmentation(kLlama2));
  const auto s10 = llt::make_alpaca_sample(alpaca().records[10], encoder, 1, 2, 512);
  EXPECT_EQ(std::vector<int32_t>(all.input_ids.begin(), all.input_ids.begin() + all.offsets[1]),
            s10.ids);
}

TEST(LltTokenize, SplitsGoToTheirOwnDirectories) {
  const auto dir = fresh_dir("splits");
  auto o = options(dir / "out");
  o.splits = {"train=0:200", "eval=200:260"};
  ASSERT_EQ(llt::tools::run_tokenize(o, "test"), 0);
  const auto train = llt::read_manifest(dir / "out/train");
  const auto eval = llt::read_manifest(dir / "out/eval");
  EXPECT_EQ(train.split, "train");
  EXPECT_EQ(train.samples, 200);
  EXPECT_EQ(eval.split, "eval");
  EXPECT_EQ(eval.start, 200);
  EXPECT_EQ(eval.samples, 60);
  EXPECT_EQ(read_all(dir / "out/eval").source_indices.front(), 200);
  EXPECT_FALSE(fs::exists(dir / "out/manifest.json"));
}

TEST(LltTokenize, BadSelectionsAreRefused) {
  const auto dir = fresh_dir("bad_selection");
  auto o = options(dir / "out");
  o.skip = 4990;
  o.first = 20;
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, {"[4990, 5010)", "5000 records"});
  o = options(dir / "out");
  o.splits = {"train=0:200"};
  o.first = 10;
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, {"--split", "--skip/--first"});
  o = options(dir / "out");
  o.splits = {"a=0:10", "a=10:20"};
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, {"'a' is used twice"});
  o = options(dir / "out");
  o.splits = {"train=0:200", "eval=150:260"};  // records 150..199 would be in both
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); },
                     {"--split 'train=0:200'", "--split 'eval=150:260'", "overlap", "[150, 200)"});
  o.splits = {"eval=200:260", "a=10:20", "train=0:201"};
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, {"overlap", "[200, 201)"});
  o = options(dir / "out");
  o.splits = {"train=4000:6000"};
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, {"[4000, 6000)"});
  for (const std::string spec :
       {"train", "train=5", "=0:5", "a/b=0:5", "..=0:5", "t=5:5", "t=-1:5", "t=0:x", "t=0:5:6"}) {
    expect_input_error([&] { llt::tools::parse_split(spec); }, {"--split '" + spec + "'"});
  }
  const auto ok = llt::tools::parse_split("eval-1.b=200:400");
  EXPECT_EQ(ok.name, "eval-1.b");
  EXPECT_EQ(ok.start, 200);
  EXPECT_EQ(ok.end, 400);
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(LltTokenize, BadRecordsOutsideTheSelectionDoNotMatter) {
  const auto dir = fresh_dir("outside");
  auto o = options(dir / "out");
  o.first = 200;  // record 284 (empty output) is not selected
  EXPECT_EQ(llt::tools::run_tokenize(o, "test"), 0);
}

// ----- bad input

struct BadCase {
  std::string name;
  std::string text;
  std::vector<std::string> needles;
};

const std::string kGood = R"({"instruction": "Say hi", "input": "", "output": "Hi"})";

std::vector<BadCase> bad_cases() {
  return {
      {"syntax",
       "[" + kGood + ",\n  {\"instruction\": \"x\" \"input\": \"\"}]",
       {"invalid JSON at line 2, column 29"}},  // nlohmann points at the token's last byte
      {"missing",
       "[" + kGood + ", {\"instruction\": \"x\", \"input\": \"\"}]",
       {"record 1", "field 'output' is missing"}},
      {"not_string",
       "[" + kGood + ", {\"instruction\": \"x\", \"input\": 5, \"output\": \"y\"}]",
       {"record 1", "field 'input' is not a string (found number)"}},
      {"null",
       "[" + kGood + ", {\"instruction\": null, \"input\": \"\", \"output\": \"y\"}]",
       {"record 1", "field 'instruction' is not a string (found null)"}},
      {"empty_output",
       "[" + kGood + ", " + kGood +
           ", {\"instruction\": \"x\", \"input\": \"\", \"output\": \"\"}]",
       {"record 2", "field 'output' is empty"}},
      {"utf8",
       "[" + kGood + ", {\"instruction\": \"caf\xe9\", \"input\": \"\", \"output\": \"y\"}]",
       {"record 1", "field 'instruction' is not valid UTF-8"}},
      {"utf8_jsonl",
       kGood + "\n" + kGood +
           "\n{\"instruction\": \"x\", \"input\": \"\xc3\x28\", \"output\": \"y\"}\n",
       {"record 2", "field 'input' is not valid UTF-8"}},
      {"jsonl_syntax",
       kGood + "\n{\"instruction\": \"x\",, }\n" + kGood + "\n",
       {"record 1", "invalid JSON at line 2, column"}},
      {"not_object", "[" + kGood + ", [1, 2]]", {"record 1", "not a JSON object (found array)"}},
      {"empty_file", " \n ", {"empty file"}},
      {"not_array", "[" + kGood + "", {"invalid JSON at line 1"}},
  };
}

TEST(LltTokenize, BadInputFailsWithRecordAndFieldAndWritesNothing) {
  const auto dir = fresh_dir("bad");
  for (const auto& c : bad_cases()) {
    SCOPED_TRACE(c.name);
    const auto input = dir / (c.name + ".json");
    std::ofstream(input, std::ios::binary) << c.text;
    auto o = options(dir / ("out_" + c.name));
    o.input = input.string();
    auto needles = c.needles;
    needles.push_back(input.string());
    expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, needles);
    EXPECT_FALSE(fs::exists(o.output));
  }
}

TEST(LltTokenize, SkippedRecordsAreCountedAndListed) {
  const auto dir = fresh_dir("skip_bad");
  const auto input = dir / "mixed.jsonl";
  std::ofstream(input, std::ios::binary)
      << kGood << "\n"
      << R"({"instruction": "x", "input": "", "output": ""})"
      << "\n\n"
      << R"({"instruction": "Add", "input": "2 and 3", "output": "5"})"
      << "\n"
      << "{\"instruction\": \"caf\xe9\", \"input\": \"\", \"output\": \"y\"}\n"
      << "not json\n"
      << R"({"instruction": "Name a colour", "input": "", "output": "Blue", "extra": 1})"
      << "\n";
  auto o = options(dir / "out");
  o.input = input.string();
  o.on_bad_record = OnBadRecord::kSkip;
  ASSERT_EQ(llt::tools::run_tokenize(o, "test"), 0);
  const auto m = llt::read_manifest(dir / "out");
  EXPECT_EQ(m.input_format, "jsonl");
  EXPECT_EQ(m.records, 6);
  EXPECT_EQ(m.samples, 3);
  EXPECT_EQ(m.skipped_bad_records, 3);
  ASSERT_EQ(m.bad_records.size(), 3u);
  EXPECT_EQ(m.bad_records[0].index, 1);
  EXPECT_EQ(m.bad_records[0].field, "output");
  EXPECT_EQ(m.bad_records[0].reason, "empty");
  EXPECT_EQ(m.bad_records[1].index, 3);
  EXPECT_EQ(m.bad_records[1].field, "instruction");
  EXPECT_EQ(m.bad_records[2].index, 4);
  EXPECT_EQ(m.bad_records[2].field, "");
  EXPECT_NE(m.bad_records[2].reason.find("line 6"), std::string::npos) << m.bad_records[2].reason;
  EXPECT_EQ(read_all(dir / "out").source_indices, (std::vector<int64_t>{0, 2, 5}));
}

TEST(LltTokenize, AllSamplesDroppedIsAnError) {
  const auto dir = fresh_dir("dropped");
  auto o = options(dir / "out");
  o.first = 10;
  o.max_len = 20;  // every Alpaca prompt is longer: no label token left
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); }, {"no sample with a label token"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// One huge record (issue 15, item 10: a 50 MB one took 7.6 GiB to tokenize into a 512-token
// sample) is refused before any tokenizing, naming the file, the record and the flag;
// --on-bad-record skip drops it, and a record of exactly --max-record-bytes is kept.
TEST(LltTokenize, RecordOverMaxRecordBytesIsRefusedNamingFileRecordAndFlag) {
  const auto dir = fresh_dir("huge");
  const auto input = dir / "huge.jsonl";
  const std::string huge(2 << 20, 'a');  // 2 MiB, over the default 1 MiB
  std::ofstream(input, std::ios::binary)
      << kGood << "\n"
      << R"({"instruction": "Say", "input": "", "output": ")" << huge << "\"}\n"
      << kGood << "\n";
  auto o = options(dir / "out");
  o.input = input.string();
  expect_input_error([&] { llt::tools::run_tokenize(o, ""); },
                     {input.string(), "record 1", "--max-record-bytes", "2097155", "1048576"});
  EXPECT_FALSE(fs::exists(o.output));
  o.on_bad_record = OnBadRecord::kSkip;
  o.max_record_bytes = 8;  // kGood: "Say hi" + "" + "Hi"
  ASSERT_EQ(llt::tools::run_tokenize(o, "test"), 0);
  const auto m = llt::read_manifest(o.output);
  EXPECT_EQ(m.skipped_bad_records, 1);
  ASSERT_EQ(m.bad_records.size(), 1u);
  EXPECT_EQ(m.bad_records[0].index, 1);
  EXPECT_EQ(read_all(o.output).source_indices, (std::vector<int64_t>{0, 2}));
}

// The bytes the process's address space spans now (VmSize).
rlim_t address_space_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7)) << 10;  // kB
  }
  return 0;
}

// Out of memory inside SentencePiece (issue 15, item 8) is exit 3 naming memory, not a failure of
// the tokenizer. A child caps its address space 384 MiB above what it spans, then tokenizes one
// record whose output is one 16 MiB segment (no whitespace: SentencePiece gets it whole and needs
// far more than that for it).
TEST(LltTokenize, OutOfMemoryInSentencePieceExitsThreeNamingMemory) {
  const auto dir = fresh_dir("oom");
  const std::string log = (dir / "log").string();
  std::vector<llt::AlpacaRecord> records(1);
  records[0].instruction = "Repeat";
  for (int i = 0; i < (16 << 20); ++i)
    records[0].output.push_back("abcdefghijklmnopqrstuvwxyz"[i % 26]);
  const llt::Tokenizer& tokenizer = llama2();
  const rlim_t cap = address_space_bytes() + (rlim_t{384} << 20);
  ASSERT_GT(cap, rlim_t{384} << 20);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    const rlimit limit{cap, cap};
    setrlimit(RLIMIT_AS, &limit);
    try {
      llt::tools::tokenize_records(records, {0}, tokenizer, 512, /*threads=*/1);
      _exit(0);
    } catch (const std::exception& e) {
      _exit(llt::report_exception("llt-tokenize", e));  // what tool_main does
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string output = llt::read_file(log);
  ASSERT_TRUE(WIFEXITED(status)) << "signal " << WTERMSIG(status) << ": " << output;
  EXPECT_EQ(WEXITSTATUS(status), 3) << output;
  EXPECT_NE(output.find("out of host memory in SentencePiece encode"), std::string::npos) << output;
  EXPECT_EQ(output.find("failed"), std::string::npos) << output;
  EXPECT_EQ(count_lines(output), 1) << output;
}

// ----- output directory

// The names in `dir`, sorted.
std::vector<std::string> file_names(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(LltTokenize, ExistingOutputIsRefusedUnlessOverwrite) {
  const auto dir = fresh_dir("overwrite");
  auto o = options(dir / "out");
  o.first = 280;
  o.samples_per_shard = 100;
  ASSERT_EQ(llt::tools::run_tokenize(o, "first"), 0);
  std::ofstream(dir / "out" / "notes.txt") << "mine\n";
  std::ofstream(dir / "out" / "shard-notes.txt") << "mine too, though it starts like a shard\n";
  const std::string before = llt::read_file(dir / "out" / "manifest.json");
  o.first = 50;
  expect_input_error([&] { llt::tools::run_tokenize(o, "second"); },
                     {"already exists", "--overwrite"});
  EXPECT_EQ(llt::read_file(dir / "out" / "manifest.json"), before);
  o.overwrite = true;
  ASSERT_EQ(llt::tools::run_tokenize(o, "second"), 0);
  const auto m = llt::read_manifest(dir / "out");
  EXPECT_EQ(m.samples, 50);
  EXPECT_EQ(m.command_line, "second");
  EXPECT_EQ(m.generation, 2);
  // The old shards (generation 1) are gone, no temp file is left, the user's files are kept.
  EXPECT_EQ(file_names(dir / "out"),
            (std::vector<std::string>{"manifest.json", "notes.txt", "shard-g2-00000.h5",
                                      "shard-notes.txt"}));
  // An empty directory is not "existing output".
  fs::create_directories(dir / "empty");
  auto e = options(dir / "empty");
  e.first = 5;
  EXPECT_EQ(llt::tools::run_tokenize(e, "empty"), 0);
}

// ----- the binary

TEST(LltTokenizeTool, WritesADatasetAndRecordsTheCommandLine) {
  const auto dir = fresh_dir("tool");
  const std::string out = (dir / "data").string();
  const auto r = run("--tokenizer " + kLlama2.string() + " --output " + out +
                     " --threads 2 --split 'train=0:40' --split eval=40:50");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("samples/s"), std::string::npos) << r.output;
  const auto m = llt::read_manifest(dir / "data/train");
  EXPECT_EQ(m.samples, 40);
  EXPECT_NE(m.command_line.find("--split train=0:40 --split eval=40:50"), std::string::npos)
      << m.command_line;
  EXPECT_EQ(m.input, kAlpaca.string());  // the shipped default
}

TEST(LltTokenizeTool, BadUsageAndInputAreOneLineAndExitOne) {
  const auto dir = fresh_dir("tool_bad");
  const std::string tok = " --tokenizer " + kLlama2.string();
  fs::create_directories(dir / "existing");
  std::ofstream(dir / "existing" / "x") << "x";
  const std::vector<std::string> cases = {
      "--output " + (dir / "a").string(),         // no --tokenizer
      tok,                                        // no --output
      tok + " --output " + (dir / "b").string(),  // record 284
      tok + " --output " + (dir / "c").string() + " --max-len 1",
      tok + " --output " + (dir / "d").string() + " --on-bad-record maybe",
      tok + " --output " + (dir / "e").string() + " --split train",
      tok + " --output " + (dir / "e").string() + " --max-record-bytes 0",
      tok + " --output " + (dir / "e").string() + " --split a=0:10 --split b=5:20",
      tok + " --output " + (dir / "f").string() + " --input /nonexistent.json",
      tok + " --output " + (dir / "existing").string() + " --first 5",
      " --tokenizer " + kAlpaca.string() + " --output " + (dir / "g").string(),  // not a model
  };
  for (const auto& args : cases) {
    const auto r = run(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
  }
  const auto r = run(tok + " --output " + (dir / "b").string());
  EXPECT_NE(r.output.find("record 284: field 'output' is empty"), std::string::npos) << r.output;
  for (const char* name : {"a", "b", "c", "d", "e", "f", "g"}) EXPECT_FALSE(fs::exists(dir / name));
}

// Starts bin/llt-tokenize `args` (no shell) in a child, its stdout and stderr going to `log`.
// `max_file_bytes` > 0 caps every file it writes (RLIMIT_FSIZE, SIGXFSZ ignored): a write past
// the cap fails with EFBIG, as one on a full disk fails with ENOSPC.
pid_t start_tokenize(const std::vector<std::string>& args, const fs::path& log,
                     rlim_t max_file_bytes = 0) {
  std::vector<std::string> all = {std::string(LLT_BINARY_DIR) + "/bin/llt-tokenize"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log_path = log.string();
  const pid_t pid = fork();
  if (pid == 0) {  // async-signal-safe calls only, up to exec
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    if (max_file_bytes > 0) {
      signal(SIGXFSZ, SIG_IGN);
      const rlimit limit{max_file_bytes, max_file_bytes};
      setrlimit(RLIMIT_FSIZE, &limit);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for the child: its exit code (minus the signal's number if a signal ended it) and output.
llt::testing::ToolRun finish(pid_t pid, const fs::path& log) {
  int status = 0;
  waitpid(pid, &status, 0);
  llt::testing::ToolRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  r.output = llt::read_file(log);
  return r;
}

// Two splits into `out`: train's shard (20 samples, 16 KiB) fits in 32 KiB, eval's (260 samples,
// 45 KiB) does not.
std::vector<std::string> two_splits(const fs::path& out) {
  return {"--tokenizer", kLlama2.string(), "--output",   out.string(), "--threads",
          "2",           "--split",        "train=0:20", "--split",    "eval=20:280"};
}

// A write failing mid-run (issue 15, item 2; it was a segfault, exit 139, in HDF5's shutdown,
// with train/ left looking finished): exit 2 with one line naming `failed_file` and the system's
// reason, no manifest for train/, and the folders the run made are gone.
void expect_clean_write_failure(const llt::testing::ToolRun& r, const fs::path& out,
                                const fs::path& failed_file, const std::string& reason) {
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find("error: " + failed_file.string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(reason), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out / "train" / "manifest.json"));
  EXPECT_FALSE(fs::exists(out));
}

// A folder on a tmpfs with mount `options` ("size=32k"), unmounted when it goes out of scope;
// `mounted` is false where mounting is not possible (not root, or no CAP_SYS_ADMIN in a container).
struct SmallDisk {
  fs::path path;
  bool mounted = false;
  SmallDisk(fs::path where, const std::string& options) : path(std::move(where)) {
    fs::create_directories(path);
    mounted = geteuid() == 0 && mount("tmpfs", path.c_str(), "tmpfs", 0, options.c_str()) == 0;
  }
  ~SmallDisk() {
    if (mounted) umount2(path.c_str(), MNT_DETACH);
  }
};

TEST(LltTokenizeTool, FullDiskExitsTwoAndLeavesNoSplitLookingFinished) {
  const auto dir = fresh_dir("full_disk");
  {
    const SmallDisk disk(dir / "disk32", "size=32k");  // full while writing eval's shard
    if (!disk.mounted) {
      GTEST_SKIP() << "cannot mount a tmpfs here (needs root); "
                   << "FileSizeLimitExitsTwoAndLeavesNoSplitLookingFinished covers a failed write";
    }
    const auto out = disk.path / "data";
    const pid_t pid = start_tokenize(two_splits(out), dir / "log32");
    expect_clean_write_failure(finish(pid, dir / "log32"), out, out / "eval/shard-g1-00000.h5",
                               "No space left on device");
  }
  {
    const SmallDisk disk(dir / "disk64", "size=64k");  // both shards fit, full while committing
    const auto out = disk.path / "data";
    const pid_t pid = start_tokenize(two_splits(out), dir / "log64");
    expect_clean_write_failure(finish(pid, dir / "log64"), out, out, "No space left on device");
  }
  {
    // No inode left for eval's shard: opening it fails (ENOSPC), which is exit 2 too. The 5 are
    // the mount's root, data/, train/, eval/ and train's shard.
    const SmallDisk disk(dir / "inodes", "size=1m,nr_inodes=5");
    const auto out = disk.path / "data";
    const pid_t pid = start_tokenize(two_splits(out), dir / "log_inodes");
    expect_clean_write_failure(finish(pid, dir / "log_inodes"), out, out / "eval/shard-g1-00000.h5",
                               "No space left on device");
  }
}

TEST(LltTokenizeTool, FileSizeLimitExitsTwoAndLeavesNoSplitLookingFinished) {
  const auto dir = fresh_dir("file_size");
  const auto out = dir / "data";
  const pid_t pid = start_tokenize(two_splits(out), dir / "log", rlim_t{32} << 10);
  expect_clean_write_failure(finish(pid, dir / "log"), out, out / "eval/shard-g1-00000.h5",
                             "File too large");
}

// An interrupted --overwrite (issue 15, item 3; shards were replaced one by one) leaves the
// previous dataset valid: a child rewriting the folder is killed as soon as its first new shard
// exists; the old manifest and every shard it names are intact, and so is the user's file. The next
// run commits and clears the killed run's leftovers.
TEST(LltTokenizeTool, KilledOverwriteLeavesThePreviousDatasetValid) {
  const auto dir = fresh_dir("killed_overwrite");
  const auto out = dir / "data";
  auto o = options(out);
  o.first = 280;
  o.samples_per_shard = 100;
  ASSERT_EQ(llt::tools::run_tokenize(o, "old"), 0);
  std::ofstream(out / "notes.txt") << "mine\n";
  const std::string manifest = llt::read_file(out / "manifest.json");
  const auto new_shards = [&] {
    int n = 0;
    for (const auto& name : file_names(out)) n += llt::shard_file_generation(name) == 2;
    return n;
  };
  // 4,996 shards of one sample each: the run is far from its commit when its first shard appears.
  const pid_t pid =
      start_tokenize({"--tokenizer", kLlama2.string(), "--output", out.string(), "--overwrite",
                      "--on-bad-record", "skip", "--samples-per-shard", "1", "--threads", "2"},
                     dir / "log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  siginfo_t info{};
  while (new_shards() == 0 && std::chrono::steady_clock::now() < deadline &&
         waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  kill(pid, SIGKILL);
  const auto r = finish(pid, dir / "log");
  ASSERT_EQ(r.code, -SIGKILL) << "the run ended before it was killed: " << r.output;
  EXPECT_GT(new_shards(), 0);
  EXPECT_EQ(llt::read_file(out / "manifest.json"), manifest);
  EXPECT_EQ(llt::Dataset::open(out).size(), 280);  // every shard's sha256 checked
  EXPECT_EQ(llt::read_file(out / "notes.txt"), "mine\n");

  o.first = 50;
  o.overwrite = true;
  ASSERT_EQ(llt::tools::run_tokenize(o, "new"), 0);
  EXPECT_EQ(llt::read_manifest(out).generation, 3);  // above the killed run's leftovers
  EXPECT_EQ(file_names(out),
            (std::vector<std::string>{"manifest.json", "notes.txt", "shard-g3-00000.h5"}));
}

TEST(LltTokenizeTool, HelpExitsZero) {
  const auto r = run("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--input", "--tokenizer", "--output", "--max-len", "--skip", "--first",
                           "--split", "--samples-per-shard", "--max-record-bytes",
                           "--on-bad-record", "--overwrite", "--threads", "--config"}) {
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
  }
}

}  // namespace
