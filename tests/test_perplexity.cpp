// Perplexity (lib/llt/perplexity, llt-perplexity): the NLL against a hand computation, which
// tokens count, batch and window invariants, the PyTorch reference (tests/assets/perplexity,
// made by data_prep/make_perplexity_goldens.py), adapters, and bad input.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llt/dataset.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/perplexity.h"
#include "llt/tokenizer.h"
#include "llt/weights.h"

#include "test_support.h"

namespace llt {
namespace {

namespace fs = std::filesystem;
using llt::testing::fresh_dir;
using llt::testing::run_tool;

const std::string kStories = std::string(LLT_SOURCE_DIR) + "/assets/models/stories260K";
const std::string kModel = kStories + "/stories260K.bin";
const std::string kTok512 = kStories + "/tok512.model";
const fs::path kAssets = fs::path(LLT_TEST_ASSETS) / "perplexity";
const std::string kTool = "llt-perplexity --model " + kModel + " --threads 1 ";

// Relative tolerance against the reference: its own fp32 error is ~1e-7 (goldens.json
// "measured"); llt's kernels sum in another order.
constexpr double kRelTol = 1e-5;

nlohmann::json goldens() {
  static const auto j = nlohmann::json::parse(read_file(kAssets / "goldens.json"));
  return j;
}

// The golden Alpaca records, tokenized by llt-tokenize (once per test process).
const fs::path& alpaca_data() {
  static const fs::path dir = [] {
    const auto d = fresh_dir("alpaca") / "data";
    const auto g = goldens()["alpaca"];
    const auto r = run_tool("llt-tokenize --tokenizer " + kTok512 + " --threads 1 --output " +
                            d.string() + " --skip " + std::to_string(g["skip"].get<int>()) +
                            " --first " + std::to_string(g["first"].get<int>()) + " --max-len " +
                            std::to_string(g["max_len"].get<int>()));
    EXPECT_EQ(r.code, 0) << r.output;
    return d;
  }();
  return dir;
}

LoadedModel stories() {
  return load_model(kModel, LoadOptions{});
}

std::vector<int32_t> story_ids() {
  return Tokenizer::load(kTok512).encode(read_file(kAssets / "story.txt"), /*bos=*/true,
                                         /*eos=*/false);
}

void expect_rel_near(double actual, double expected, double rel, const std::string& what) {
  EXPECT_LE(std::abs(actual - expected), rel * std::abs(expected))
      << what << ": " << actual << " vs " << expected;
}

nlohmann::json read_json(const fs::path& path) {
  return nlohmann::json::parse(read_file(path));
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  return records;
}

// ---------------------------------------------------------------------------------------------
// The numbers

TEST(Perplexity, EqualsExpOfTheMeanNllComputedByHand) {
  Transformer model(preset_args("tiny"), at::TensorOptions().dtype(at::kFloat));
  model->init_random(7);
  model->eval();
  const std::vector<ScoredSequence> seqs = {
      {{1, 5, 9, 300, 2, 17, 42}, 2, 0, 0},
      {{1, 400, 3, 3, 3, 81, 6, 511, 0, 12, 99, 100}, 1, 1, 0},
      {{1, 8, 260, 7, 250}, 4, 2, 0},
  };
  const auto result = score_sequences(*model, seqs, /*batch_size=*/2, /*pad_id=*/0);

  double total = 0;
  int64_t count = 0;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& s = seqs[i];
    const auto ids = at::tensor(std::vector<int64_t>(s.ids.begin(), s.ids.end())).unsqueeze(0);
    const auto logp = at::log_softmax(model->forward(ids)[0].to(at::kDouble), /*dim=*/-1);
    double sum = 0;
    for (size_t t = s.first_target; t < s.ids.size(); ++t) {
      sum -= logp[t - 1][s.ids[t]].item<double>();  // logits at t - 1 predict the token at t
    }
    EXPECT_EQ(result.sequences[i].tokens, static_cast<int64_t>(s.ids.size()) - s.first_target);
    expect_rel_near(result.sequences[i].nll_sum, sum, 1e-5, "sequence " + std::to_string(i));
    total += sum;
    count += static_cast<int64_t>(s.ids.size()) - s.first_target;
  }
  EXPECT_EQ(result.tokens, count);  // 5 + 11 + 1
  EXPECT_EQ(count, 17);
  expect_rel_near(result.perplexity(), std::exp(total / count), 1e-5, "perplexity");
  EXPECT_EQ(result.forward_tokens, 7 + 12 + 5);
}

TEST(Perplexity, NonFiniteLossThrowsNamingTheWeights) {
  Transformer model(preset_args("tiny"), at::TensorOptions().dtype(at::kFloat));
  model->init_random(7);
  model->eval();
  {
    at::NoGradGuard no_grad;
    model->named_parameters()["layers.0.attention.wv.weight"][2][9] = NAN;
  }
  const std::vector<ScoredSequence> seqs = {{{1, 5, 9, 300, 2}, 1, 0, 0}};
  try {
    score_sequences(*model, seqs, /*batch_size=*/1, /*pad_id=*/0);
    ADD_FAILURE() << "expected NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_EQ(e.code(), ExitCode::kNonFinite);
    EXPECT_NE(std::string(e.what()).find("weights"), std::string::npos) << e.what();
  }
}

TEST(Perplexity, LabelsCountResponseTokensAndAllCountEveryPrediction) {
  const auto data = Dataset::open(alpaca_data());
  const auto labels = dataset_sequences(data, ScoredTokens::kLabels);
  const auto all = dataset_sequences(data, ScoredTokens::kAll);
  ASSERT_EQ(labels.size(), 5u);
  int64_t n_labels = 0, n_all = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    const auto v = data.sample(i);
    EXPECT_EQ(labels[i].first_target, v.source_length);
    EXPECT_EQ(all[i].first_target, 1);
    EXPECT_EQ(labels[i].index, v.source_index);
    n_labels += v.length - v.source_length;
    n_all += v.length - 1;
  }
  // The manifest's label tokens are what llt-finetune trains on.
  EXPECT_EQ(n_labels, data.manifest().label_tokens);
  EXPECT_EQ(n_all, data.tokens() - data.size());
  auto model = stories();
  EXPECT_EQ(score_sequences(*model.model, labels, 2, 2).tokens, n_labels);
  EXPECT_EQ(score_sequences(*model.model, all, 2, 2).tokens, n_all);
}

TEST(Perplexity, BatchSizeDoesNotChangeAnyNumber) {
  const auto data = Dataset::open(alpaca_data());
  auto model = stories();
  const auto seqs = dataset_sequences(data, ScoredTokens::kAll);  // lengths 161..264: batches are padded
  const auto one = score_sequences(*model.model, seqs, 1, /*pad_id=*/2);
  for (const int64_t batch : {3, 4}) {
    const auto many = score_sequences(*model.model, seqs, batch, /*pad_id=*/2);
    ASSERT_EQ(many.sequences.size(), one.sequences.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      EXPECT_EQ(many.sequences[i].tokens, one.sequences[i].tokens);
      expect_rel_near(many.sequences[i].nll_sum, one.sequences[i].nll_sum, 1e-5,
                      "batch " + std::to_string(batch) + ", sample " + std::to_string(i));
    }
    expect_rel_near(many.mean_nll(), one.mean_nll(), 1e-5, "mean NLL");
  }
  // Text windows: the last one is shorter, so it is padded in a batch.
  const auto windows = text_windows(story_ids(), 100, 37);
  expect_rel_near(score_sequences(*model.model, windows, 4, 0).nll_sum,
                  score_sequences(*model.model, windows, 1, 0).nll_sum, 1e-5, "windows");
}

// ---------------------------------------------------------------------------------------------
// Sliding windows

TEST(TextWindows, StrideEqualToWindowGivesIndependentChunks) {
  const auto ids = story_ids();  // 650 tokens with BOS
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t w = 128;
  const auto windows = text_windows(ids, w, w);
  ASSERT_EQ(static_cast<int64_t>(windows.size()), (n + w - 1) / w);
  std::vector<ScoredSequence> chunks;
  for (int64_t begin = 0; begin < n; begin += w) {
    const int64_t end = std::min(begin + w, n);
    chunks.push_back({std::vector<int32_t>(ids.begin() + begin, ids.begin() + end), 1,
                      static_cast<int64_t>(chunks.size()), begin});
  }
  for (size_t i = 0; i < windows.size(); ++i) {
    EXPECT_EQ(windows[i].ids, chunks[i].ids) << i;
    EXPECT_EQ(windows[i].first_target, 1) << i;
    EXPECT_EQ(windows[i].start, chunks[i].start) << i;
  }
  auto model = stories();
  const auto a = score_sequences(*model.model, windows, 2, 0);
  const auto b = score_sequences(*model.model, chunks, 1, 0);
  EXPECT_EQ(a.tokens, n - static_cast<int64_t>(chunks.size()));  // each chunk's first: no target
  EXPECT_EQ(a.tokens, b.tokens);
  expect_rel_near(a.nll_sum, b.nll_sum, 1e-6, "chunks");
}

TEST(TextWindows, StrideBelowWindowScoresEveryTokenButTheFirstOnce) {
  for (const int64_t n : {2, 3, 50, 650}) {
    const std::vector<int32_t> ids(n, 7);
    for (const auto& [w, s] : std::vector<std::pair<int64_t, int64_t>>{
             {2, 1}, {8, 3}, {100, 37}, {128, 32}, {512, 200}, {64, 63}}) {
      const auto windows = text_windows(ids, w, s);
      std::multiset<int64_t> scored;  // positions in the text
      for (const auto& win : windows) {
        EXPECT_LE(static_cast<int64_t>(win.ids.size()), w);
        EXPECT_EQ(win.start % s, 0);
        for (int64_t t = win.first_target; t < static_cast<int64_t>(win.ids.size()); ++t) {
          scored.insert(win.start + t);
        }
      }
      EXPECT_EQ(static_cast<int64_t>(scored.size()), n - 1) << n << " " << w << " " << s;
      EXPECT_EQ(std::set<int64_t>(scored.begin(), scored.end()).size(), scored.size());
      EXPECT_EQ(scored.count(0), 0u);
    }
  }
  EXPECT_THROW(text_windows({1, 2, 3}, 4, 5), InputError);
  EXPECT_THROW(text_windows({1, 2, 3}, 4, 0), InputError);
  EXPECT_THROW(text_windows({1, 2, 3}, 1, 1), InputError);
  EXPECT_THROW(text_windows({1}, 4, 4), InputError);
}

// ---------------------------------------------------------------------------------------------
// The PyTorch reference (data_prep/make_perplexity_goldens.py), through the tool

TEST(LltPerplexity, MatchesTheReferenceOnAlpacaSamples) {
  const auto g = goldens();
  const auto data = Dataset::open(alpaca_data());
  ASSERT_EQ(data.size(), static_cast<int64_t>(g["samples"].size()));
  for (int64_t i = 0; i < data.size(); ++i) {  // the reference scored the very same ids
    const auto v = data.sample(i);
    EXPECT_EQ(std::vector<int32_t>(v.ids, v.ids + v.length),
              g["samples"][i]["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(v.source_length, g["samples"][i]["source_length"].get<int>());
  }
  const auto dir = fresh_dir("reference");
  for (const std::string over : {"labels", "all"}) {
    const auto out = dir / over;
    const auto per_sample = dir / (over + ".jsonl");
    const auto r = run_tool(kTool + "--data " + alpaca_data().string() + " --tokens " + over +
                            " --batch-size 3 --output " + out.string() + " --per-sample " +
                            per_sample.string());
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("perplexity"), std::string::npos) << r.output;
    const auto j = read_json(out / "perplexity.json");
    EXPECT_EQ(j["over"], over);
    EXPECT_EQ(j["tokens"], g[over]["tokens"]);
    EXPECT_EQ(j["samples"], 5);
    expect_rel_near(j["mean_nll"], g[over]["mean_nll"], kRelTol, over + " mean_nll");
    expect_rel_near(j["perplexity"], g[over]["perplexity"], kRelTol, over + " perplexity");
    for (const char* key : {"model", "adapter", "data", "n_layers", "dtype", "elapsed_s",
                            "tokens_per_s", "git_sha", "window", "stride"}) {
      EXPECT_TRUE(j.contains(key)) << key;
    }
    const auto records = read_jsonl(per_sample);
    ASSERT_EQ(records.size(), 5u);
    for (size_t i = 0; i < records.size(); ++i) {
      const auto& gs = g["samples"][i];
      EXPECT_EQ(records[i]["index"], gs["index"]);
      EXPECT_EQ(records[i]["tokens"], gs[over]["tokens"]);
      expect_rel_near(records[i]["nll_sum"], gs[over]["nll_sum"], kRelTol, "sample nll_sum");
      expect_rel_near(records[i]["mean_nll"],
                      gs[over]["nll_sum"].get<double>() / gs[over]["tokens"].get<double>(), kRelTol,
                      "sample mean_nll");
    }
  }
}

TEST(LltPerplexity, MatchesTheReferenceOnSlidingWindowsOfAText) {
  const auto g = goldens();
  EXPECT_EQ(static_cast<int64_t>(story_ids().size()), g["text"]["ids"].get<int64_t>());
  const auto dir = fresh_dir("text");
  const std::string text = (kAssets / "story.txt").string();
  for (const auto& c : g["text"]["cases"]) {
    const int64_t w = c["window"], s = c["stride"];
    const auto out = dir / (std::to_string(w) + "-" + std::to_string(s));
    // 512/512 is the default: the model's max_seq_len, stride = window.
    const std::string windows = w == 512 && s == 512 ? ""
                                                     : "--window " + std::to_string(w) +
                                                           " --stride " + std::to_string(s) + " ";
    const auto r = run_tool(kTool + "--tokenizer " + kTok512 + " --text " + text + " " + windows +
                            "--batch-size 4 --output " + out.string());
    ASSERT_EQ(r.code, 0) << r.output;
    const auto j = read_json(out / "perplexity.json");
    EXPECT_EQ(j["over"], "text");
    EXPECT_EQ(j["window"], w);
    EXPECT_EQ(j["stride"], s);
    EXPECT_EQ(j["tokens"], c["tokens"]);
    EXPECT_EQ(j["samples"], c["windows"]);
    expect_rel_near(j["mean_nll"], c["mean_nll"], kRelTol, out.filename().string());
    expect_rel_near(j["perplexity"], c["perplexity"], kRelTol, out.filename().string());
  }
}

TEST(LltPerplexity, ReadsFlatTomlConfigs) {
  const auto dir = fresh_dir("config");
  const auto config = dir / "eval.toml";
  std::ofstream(config) << "tokenizer = \"" << kTok512 << "\"\ntext = \""
                        << (kAssets / "story.txt").string() << "\"\nwindow = 128\nstride = 32\n"
                        << "batch-size = 2\n";
  const auto r =
      run_tool(kTool + "--config " + config.string() + " --output " + (dir / "out").string());
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = read_json(dir / "out" / "perplexity.json");
  EXPECT_EQ(j["window"], 128);
  EXPECT_EQ(j["stride"], 32);
  EXPECT_EQ(j["tokens"], goldens()["text"]["cases"][2]["tokens"]);
  std::ofstream(config, std::ios::app) << "lora-rank = 4\n";  // not an llt-perplexity key
  EXPECT_EQ(run_tool(kTool + "--config " + config.string() + " --overwrite --output " +
                     (dir / "out").string())
                .code,
            1);
}

// ---------------------------------------------------------------------------------------------
// Adapters

TEST(LltPerplexity, AnAdapterChangesTheNumberAndAZeroAdapterDoesNot) {
  const auto dir = fresh_dir("adapter");
  auto model = stories();
  LoraOptions lora;
  lora.rank = 2;
  lora.alpha = 4;
  lora.dropout = 0;
  apply_lora(*model.model, lora);
  save_adapter(dir / "zero", *model.model, lora);  // B = 0: the base model's outputs
  {
    at::NoGradGuard no_grad;
    at::manual_seed(3);
    for (auto& [name, p] : lora_parameters(*model.model)) {
      if (name.find("lora_b") != std::string::npos) p.normal_(0, 0.5);
    }
  }
  save_adapter(dir / "trained", *model.model, lora);

  auto mean_nll = [&](const std::string& extra, const std::string& name) {
    const auto out = dir / name;
    const auto r = run_tool(kTool + "--data " + alpaca_data().string() + " --output " +
                            out.string() + " " + extra);
    EXPECT_EQ(r.code, 0) << r.output;
    const auto j = read_json(out / "perplexity.json");
    return std::make_pair(j["mean_nll"].get<double>(), j["adapter"]);
  };
  const auto [base, base_adapter] = mean_nll("", "base");
  const auto [zero, zero_adapter] = mean_nll("--adapter " + (dir / "zero").string(), "z");
  const auto [trained, trained_adapter] = mean_nll("--adapter " + (dir / "trained").string(), "t");
  expect_rel_near(base, goldens()["labels"]["mean_nll"], kRelTol, "base");
  EXPECT_TRUE(base_adapter.is_null());
  EXPECT_EQ(zero_adapter, (dir / "zero").string());
  expect_rel_near(zero, base, 1e-6, "zero adapter");
  EXPECT_GT(std::abs(trained - base), 1e-3 * base) << trained << " vs " << base;
}

// ---------------------------------------------------------------------------------------------
// Bad input: exit 1, one line naming the flag or file, no perplexity.json

TEST(LltPerplexity, RefusesBadInputWithOneLineAndWritesNothing) {
  const auto dir = fresh_dir("bad");
  const auto empty = dir / "empty.txt";
  std::ofstream{empty};
  const std::string text =
      " --tokenizer " + kTok512 + " --text " + (kAssets / "story.txt").string();
  const std::string data = " --data " + alpaca_data().string();
  const auto taken = dir / "taken";
  fs::create_directories(taken);
  std::ofstream(taken / "perplexity.json") << "precious\n";
  const auto per_sample = dir / "old.jsonl";
  std::ofstream(per_sample) << "precious\n";
  const auto latin1 = dir / "latin1.txt";
  std::ofstream(latin1) << "Once upon a time\nthere was a caf\xe9.\n";  // not UTF-8

  const std::vector<std::pair<std::string, std::string>> cases = {
      {" --data " + (dir / "missing").string(), "missing"},
      {" --tokenizer " + kTok512 + " --text " + empty.string(), "empty.txt"},
      {" --tokenizer " + kTok512 + " --text " + latin1.string(),
       "latin1.txt (--text): invalid UTF-8 at byte 32 (line 2, column 16)"},
      {text + " --window 600", "--window"},
      {text + " --window 64 --stride 65", "--stride"},
      {text + " --stride 0", "--stride"},
      {text + " --stride -3", "--stride"},
      {text + data, "--data"},
      {data + " --window 64", "--window"},
      {text + " --tokens all", "--tokens"},
      {data + " --tokenizer " + std::string(LLT_SOURCE_DIR) +
           "/assets/tokenizers/llama2/tokenizer.model",
       "vocab_size"},
      {data + " --per-sample " + per_sample.string(), "old.jsonl"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto out = dir / ("out" + std::to_string(i));
    const auto r = run_tool(kTool + cases[i].first + " --output " + out.string());
    EXPECT_EQ(r.code, 1) << cases[i].first << "\n" << r.output;
    EXPECT_NE(r.output.find(cases[i].second), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(fs::exists(out / "perplexity.json")) << cases[i].first;
  }
  EXPECT_EQ(read_file(per_sample), "precious\n");

  // An existing perplexity.json is refused before anything is written (no --per-sample file
  // either), then replaced with --overwrite.
  const auto fresh_per_sample = dir / "new.jsonl";
  auto r = run_tool(kTool + data + " --per-sample " + fresh_per_sample.string() + " --output " +
                    taken.string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("perplexity.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(taken / "perplexity.json"), "precious\n");
  EXPECT_FALSE(fs::exists(fresh_per_sample));
  r = run_tool(kTool + data + " --overwrite --output " + taken.string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(read_file(taken / "perplexity.json"), "precious\n");
  EXPECT_FALSE(fs::exists(taken / "perplexity.json.tmp"));
}

// ---------------------------------------------------------------------------------------------
// Non-finite weights: exit 4 naming the likely cause, nothing written

TEST(LltPerplexity, NanWeightsExitFourAndWriteNothing) {
  const auto dir = fresh_dir("nan");
  const auto nan_model = dir / "nan.bin";
  testing::write_nan_llama2c_copy(kModel, nan_model);
  const std::string tool = "llt-perplexity --model " + nan_model.string() + " --threads 1 ";
  const std::vector<std::string> inputs = {
      " --tokenizer " + kTok512 + " --text " + (kAssets / "story.txt").string(),
      " --data " + alpaca_data().string()};
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto out = dir / ("out" + std::to_string(i));
    const auto per_sample = dir / ("per_sample" + std::to_string(i) + ".jsonl");
    const auto r = run_tool(tool + inputs[i] + " --per-sample " + per_sample.string() +
                            " --output " + out.string());
    EXPECT_EQ(r.code, 4) << inputs[i] << "\n" << r.output;
    EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("non-finite"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("weights"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out / "perplexity.json")) << inputs[i];
    EXPECT_FALSE(fs::exists(per_sample)) << inputs[i];
  }
}

}  // namespace
}  // namespace llt
