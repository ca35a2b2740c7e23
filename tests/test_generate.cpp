// Decoding: KV cache on/off equality, batch independence, sampling filters, prompt files, and
// token-for-token agreement with independent implementations on the shipped stories260K model.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llt/alpaca.h"
#include "llt/errors.h"
#include "llt/generate.h"
#include "llt/io.h"
#include "llt/tokenizer.h"
#include "llt/tools/generate.h"
#include "llt/weights.h"
#include "test_support.h"

using namespace llt::tools;  // the tool layer under test

namespace llt {
namespace {

namespace fs = std::filesystem;

Transformer tiny_model(uint64_t seed, at::ScalarType dtype = at::kFloat) {
  ModelArgs args = preset_args("tiny");
  args.vocab_size = 96;
  Transformer model(args, at::TensorOptions().dtype(dtype));
  model->init_random(seed);
  return model;
}

std::vector<std::vector<int64_t>> sample_prompts() {
  return {{1, 5, 17, 42, 8}, {1, 77}, {1, 3, 9, 27, 81, 50, 60, 2 + 10}};
}

GenerateOptions greedy(int64_t max_new, bool kv_cache) {
  GenerateOptions o;
  o.sampling.max_new_tokens = max_new;
  o.kv_cache = kv_cache;
  return o;
}

TEST(Generate, GreedyIdsEqualWithAndWithoutKvCache) {
  auto model = tiny_model(7);
  const auto with_cache = generate(*model, sample_prompts(), greedy(40, true));
  const auto without = generate(*model, sample_prompts(), greedy(40, false));
  ASSERT_EQ(with_cache.sequences.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(with_cache.sequences[i].ids.size(), 40u);
    EXPECT_EQ(with_cache.sequences[i].ids, without.sequences[i].ids) << "prompt " << i;
  }
}

TEST(Generate, BatchedEqualsOneAtATime) {
  auto model = tiny_model(3);
  const auto prompts = sample_prompts();
  const auto batched = generate(*model, prompts, greedy(20, true));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto alone = generate(*model, {prompts[i]}, greedy(20, true));
    EXPECT_EQ(alone.sequences[0].ids, batched.sequences[i].ids) << "prompt " << i;
    EXPECT_EQ(batched.sequences[i].prompt_ids, prompts[i]);
  }
}

TEST(Generate, KvCacheLogitsMatchFullForward) {
  auto model = tiny_model(5);
  torch::NoGradGuard no_grad;
  const auto tokens = at::randint(0, 96, {2, 12}, at::kLong);
  const auto full = model->forward(tokens);  // (2, 12, V)
  auto cache = KVCache::allocate(model->args(), 2, 12, at::TensorOptions().dtype(at::kFloat));
  std::vector<at::Tensor> steps = {model->forward(tokens.slice(1, 0, 5), &cache)};
  for (int64_t t = 5; t < 12; ++t) steps.push_back(model->forward(tokens.slice(1, t, t + 1), &cache));
  const auto incremental = at::cat(steps, /*dim=*/1);
  EXPECT_EQ(cache.length, 12);
  EXPECT_LT((incremental - full).abs().max().item<float>(), 1e-5);
}

TEST(Generate, StopsAtStopIdAndExcludesIt) {
  auto model = tiny_model(7);
  const auto free_run = generate(*model, {{1, 5, 17}}, greedy(30, true));
  ASSERT_GE(free_run.sequences[0].ids.size(), 5u);
  auto options = greedy(30, true);
  options.stop_ids = {free_run.sequences[0].ids[4]};
  const auto stopped = generate(*model, {{1, 5, 17}}, options);
  EXPECT_TRUE(stopped.sequences[0].stopped);
  const auto& ids = stopped.sequences[0].ids;
  EXPECT_LE(ids.size(), 4u);
  EXPECT_EQ(std::vector<int64_t>(free_run.sequences[0].ids.begin(),
                                 free_run.sequences[0].ids.begin() + ids.size()),
            ids);
}

TEST(Generate, RejectsEmptyAndOverlongPrompts) {
  auto model = tiny_model(1);
  EXPECT_THROW(generate(*model, {{}}, greedy(4, true)), InputError);
  std::vector<int64_t> too_long(model->args().max_seq_len, 3);
  EXPECT_THROW(generate(*model, {too_long}, greedy(4, true)), InputError);
}

// NaN weights give NaN logits, whose argmax is still an id: without the check, garbage would
// pass for a completion.
TEST(Generate, NonFiniteLogitsThrowNamingTheWeights) {
  for (const bool kv_cache : {true, false}) {
    auto model = tiny_model(7);
    {
      at::NoGradGuard no_grad;
      model->named_parameters()["layers.1.feed_forward.w2.weight"][3][5] = NAN;
    }
    try {
      generate(*model, sample_prompts(), greedy(8, kv_cache));
      ADD_FAILURE() << "expected NonFiniteError (kv_cache " << kv_cache << ")";
    } catch (const NonFiniteError& e) {
      EXPECT_EQ(e.code(), ExitCode::kNonFinite);
      EXPECT_NE(std::string(e.what()).find("weights"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
    }
  }
}

TEST(Sampling, TopKOneIsGreedyAndSeedReproduces) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const auto logits = at::randn({4, 50});
  SamplingOptions o;
  o.temperature = 0.7;
  o.top_k = 1;
  EXPECT_TRUE(sample_next(logits, o, gen).equal(logits.argmax(-1)));

  o.top_k = 0;
  auto g1 = at::make_generator<at::CPUGeneratorImpl>(42);
  auto g2 = at::make_generator<at::CPUGeneratorImpl>(42);
  std::vector<int64_t> a, b;
  for (int i = 0; i < 20; ++i) {
    a.push_back(sample_next(logits, o, g1)[0].item<int64_t>());
    b.push_back(sample_next(logits, o, g2)[0].item<int64_t>());
  }
  EXPECT_EQ(a, b);
}

TEST(Sampling, TopPKeepsOnlyTheNucleus) {
  // probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two tokens only.
  const auto logits = at::log(at::tensor({0.5f, 0.3f, 0.15f, 0.05f})).unsqueeze(0);
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_p = 0.7;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 400; ++i) ++counts[sample_next(logits, o, gen)[0].item<int64_t>()];
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_GT(counts[0], counts[1]);
  EXPECT_GT(counts[1], 0);
}

// ---------------------------------------------------------------------------------------------
// Prompts and templates

fs::path temp_file(const std::string& name, const std::string& content) {
  const auto path = fs::temp_directory_path() / ("llt_test_generate_" + name);
  std::ofstream(path) << content;
  return path;
}

TEST(PromptsFile, TextLinesAndJsonl) {
  const auto text = temp_file("a.txt", "first prompt\n\n{not json} second\r\n");
  const auto records = read_prompts_file(text.string());
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].prompt, "{not json} second");

  const auto jsonl = temp_file(
      "b.jsonl", "{\"prompt\": \"hello\"}\n{\"instruction\": \"Add\", \"input\": \"1 and 2\"}\n");
  const auto parsed = read_prompts_file(jsonl.string());
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0].prompt, "hello");
  EXPECT_EQ(parsed[1].input, "1 and 2");
  EXPECT_EQ(apply_template(parsed[1], PromptTemplate::kAlpaca), format_alpaca_prompt("Add", "1 and 2"));
}

TEST(PromptsFile, PerRecordTemplateOverridesTheFlag) {
  const auto jsonl = temp_file(
      "t.jsonl",
      "{\"prompt\": \"raw\", \"template\": \"none\"}\n{\"instruction\": \"Add\", "
      "\"template\": \"alpaca\"}\n{\"instruction\": \"Sub\"}\n");
  const auto parsed = read_prompts_file(jsonl.string());
  ASSERT_EQ(parsed.size(), 3u);
  EXPECT_EQ(apply_template(parsed[0], PromptTemplate::kAlpaca), "raw");
  EXPECT_EQ(apply_template(parsed[1], PromptTemplate::kNone), format_alpaca_prompt("Add", ""));
  EXPECT_EQ(apply_template(parsed[2], PromptTemplate::kNone), "Sub");  // no field: the flag decides
  EXPECT_EQ(apply_template(parsed[2], PromptTemplate::kAlpaca), format_alpaca_prompt("Sub", ""));
  // The demo's prompts: the seed's four raw, then held-out Alpaca instructions templated.
  const auto demo =
      read_prompts_file(std::string(LLT_SOURCE_DIR) + "/assets/data/demo_prompts.jsonl");
  ASSERT_EQ(demo.size(), 7u);
  EXPECT_EQ(apply_template(demo[0], PromptTemplate::kNone), "I believe the meaning of life is");
  EXPECT_EQ(apply_template(demo[4], PromptTemplate::kNone).rfind("Below is an instruction", 0), 0u);
  const auto bad = temp_file("u.jsonl", "{\"prompt\": \"x\", \"template\": \"chatml\"}\n");
  EXPECT_THROW(read_prompts_file(bad.string()), InputError);
}

TEST(PromptsFile, SeedPromptsObject) {
  // The shipped copy of the seed's prompts: an object with a "prompts" array, prompts spanning
  // lines (meta-llama/llama example_text_completion.py's strings, 8-space indents kept).
  const auto seed = read_prompts_file(std::string(LLT_SOURCE_DIR) + "/assets/data/seed_prompts.json");
  ASSERT_EQ(seed.size(), 4u);
  EXPECT_EQ(seed[0].prompt, "I believe the meaning of life is");
  EXPECT_EQ(seed[1].prompt, "Simply put, the theory of relativity states that ");
  EXPECT_EQ(seed[3].prompt.substr(0, 38), "Translate English to French:\n        \n");
  const auto records = temp_file(
      "f.json", "{\"prompts\": [\"plain\", {\"instruction\": \"Add\", \"input\": \"1 and 2\"}]}");
  const auto parsed = read_prompts_file(records.string());
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0].prompt, "plain");
  EXPECT_EQ(parsed[1].input, "1 and 2");
  const auto bad = temp_file("g.json", "{\"prompts\": [\"ok\", 3]}");
  testing::expect_input_error([&] { read_prompts_file(bad.string()); }, {"g.json", "prompts[1]"});
  const auto empty = temp_file("h.json", "{\"prompts\": []}");
  testing::expect_input_error([&] { read_prompts_file(empty.string()); }, {"h.json", "'prompts'"});
}

TEST(PromptsFile, BadRecordsNameTheLine) {
  const auto bad = temp_file("c.jsonl", "{\"prompt\": \"ok\"}\n[1, 2]\n");
  try {
    read_prompts_file(bad.string());
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("record 2"), std::string::npos) << e.what();
  }
  const auto missing = temp_file("d.jsonl", "{\"text\": \"no prompt field\"}\n");
  EXPECT_THROW(read_prompts_file(missing.string()), InputError);
  const auto empty = temp_file("e.txt", "\n  \n");
  EXPECT_THROW(read_prompts_file(empty.string()), InputError);
}

// A binary file (here gzip's header, with NUL bytes) or one with invalid UTF-8 is not taken
// for prompts: refused naming the file and where the first bad byte is.
TEST(PromptsFile, BinaryOrInvalidUtf8IsRefusedNamingFileAndLine) {
  const auto gz = temp_file("p.gz", std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00", 8));
  testing::expect_input_error([&] { read_prompts_file(gz.string()); },
                              {"p.gz", "invalid UTF-8 at byte 1 (line 1, column 2)"});
  const auto utf16 = temp_file("w.txt", std::string("h\0i\0\n\0", 6));  // UTF-16LE "hi\n"
  testing::expect_input_error([&] { read_prompts_file(utf16.string()); },
                              {"w.txt", "NUL byte at byte 1 (line 1, column 2)", "binary"});
  const auto latin1 = temp_file("l.txt", "first prompt\nna\xefve caf\xe9\n");
  testing::expect_input_error([&] { read_prompts_file(latin1.string()); },
                              {"l.txt", "invalid UTF-8 at byte 15 (line 2, column 3)"});
  const auto jsonl =
      temp_file("n.jsonl", std::string("{\"prompt\": \"a\"}\n{\"prompt\": \"\0\"}\n", 32));
  testing::expect_input_error([&] { read_prompts_file(jsonl.string()); }, {"n.jsonl", "line 2"});
}

TEST(Alpaca, TemplatesAreStanfordAlpacas) {
  EXPECT_EQ(format_alpaca_prompt("Name a color.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nName a color.\n\n### Response:");
  EXPECT_EQ(format_alpaca_prompt("Sum", "{instruction}"),
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nSum\n\n### Input:\n{instruction}\n\n### Response:");
}

// A JSON object (a wrapper such as {"data": [...]}, or one record pretty-printed) where an array
// of records (or JSONL) is expected is refused saying so, not as "field 'instruction' is missing".
TEST(Alpaca, AnObjectWhereAnArrayIsExpectedSaysWhatWasExpected) {
  const std::string record = R"({"instruction": "x", "input": "", "output": "y"})";
  for (const std::string& text :
       {"{\n  \"data\": [" + record + "]\n}\n", "{\"data\": [" + record + "]}",
        std::string("{\n  \"instruction\": \"x\",\n  \"input\": \"\",\n"
                    "  \"output\": \"y\"\n}\n")}) {
    SCOPED_TRACE(text);
    const std::string what = testing::expect_input_error(
        [&] { parse_alpaca_records(text, "wrapped.json"); },
        {"wrapped.json: expected a JSON array of Alpaca records (or JSONL", "got an object"});
    EXPECT_EQ(what.find("missing"), std::string::npos) << what;
  }
  // One record on one line is JSONL of one record.
  const auto one = parse_alpaca_records(record + "\n", "one.jsonl");
  EXPECT_EQ(one.format, "jsonl");
  ASSERT_EQ(one.records.size(), 1u);
  EXPECT_TRUE(one.bad.empty());
  EXPECT_EQ(one.records[0].output, "y");
}

// ---------------------------------------------------------------------------------------------
// stories260K against independent implementations (llama2.c run.c and the Python reference in
// data_prep/; tests/assets/stories260K/README.md says how the goldens were made).

const fs::path kStories = fs::path(LLT_SOURCE_DIR) / "assets/models/stories260K";

nlohmann::json stories_goldens() {
  return nlohmann::json::parse(
      read_file(fs::path(LLT_TEST_ASSETS) / "stories260K/greedy_goldens.json"));
}

TEST(Stories260K, PromptIdsEqualTheGoldens) {
  const auto tokenizer = Tokenizer::load(kStories / "tok512.model");
  for (const auto& c : stories_goldens()["cases"]) {
    const auto ids = tokenizer.encode(c["prompt"].get<std::string>(), /*bos=*/true, /*eos=*/false);
    EXPECT_EQ(std::vector<int64_t>(ids.begin(), ids.end()), c["prompt_ids"].get<std::vector<int64_t>>())
        << c["name"];
  }
}

void expect_stories_goldens(bool kv_cache, size_t max_cases) {
  auto loaded = load_model(kStories / "stories260K.bin", LoadOptions{});
  const auto goldens = stories_goldens();
  const int64_t steps = goldens["steps"].get<int64_t>();
  size_t checked = 0;
  for (const auto& c : goldens["cases"]) {
    if (checked++ == max_cases) break;
    const auto prompt = c["prompt_ids"].get<std::vector<int64_t>>();
    GenerateOptions options = greedy(steps + 1 - static_cast<int64_t>(prompt.size()), kv_cache);
    options.stop_ids = {goldens["bos_id"].get<int64_t>(), goldens["eos_id"].get<int64_t>()};
    const auto result = generate(*loaded.model, {prompt}, options);
    EXPECT_EQ(result.sequences[0].ids, c["ids"].get<std::vector<int64_t>>()) << c["name"];
    EXPECT_EQ(result.sequences[0].stopped, c["stopped_by"] == "bos") << c["name"];
  }
}

TEST(Stories260K, GreedyIdsEqualRunCWithKvCache) { expect_stories_goldens(true, 1000); }

TEST(Stories260K, GreedyIdsEqualRunCWithoutKvCache) { expect_stories_goldens(false, 3); }

TEST(Stories260K, BatchedGreedyEqualsGoldens) {
  auto loaded = load_model(kStories / "stories260K.bin", LoadOptions{});
  const auto goldens = stories_goldens();
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& c : goldens["cases"]) prompts.push_back(c["prompt_ids"]);
  GenerateOptions options = greedy(64, true);
  options.stop_ids = {1, 2};
  const auto result = generate(*loaded.model, prompts, options);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto golden = goldens["cases"][i]["ids"].get<std::vector<int64_t>>();
    const size_t n = std::min<size_t>(64, golden.size());
    EXPECT_EQ(result.sequences[i].ids, std::vector<int64_t>(golden.begin(), golden.begin() + n))
        << goldens["cases"][i]["name"];
  }
}

}  // namespace
}  // namespace llt
