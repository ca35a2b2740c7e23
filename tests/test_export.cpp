// llt-export (lib/llt/export, lib/llt/tools/export): what it writes loads back into llt with the
// logits of what was exported (bitwise where the maths is a relayout, within the merge's rounding
// with an adapter), an independent Python reader and reference forward agree
// (data_prep/check_export.py), transformers' LlamaForCausalLM agrees (ExportClients, in the
// client venv), and bad input or a failed write leaves nothing behind.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>

#include "llt/export.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/pth.h"
#include "llt/pth_writer.h"
#include "llt/safetensors.h"
#include "llt/tokenizer.h"
#include "llt/weights.h"

#include "test_support.h"

namespace {

namespace fs = std::filesystem;
using llt::testing::run_tool;
using llt::testing::TempDir;

const std::string kStories = std::string(LLT_SOURCE_DIR) + "/assets/models/stories260K";
const std::string kStoriesBin = kStories + "/stories260K.bin";
const std::string kTok512 = kStories + "/tok512.model";
const std::string kLlama2Tokenizer =
    std::string(LLT_SOURCE_DIR) + "/assets/tokenizers/llama2/tokenizer.model";

// Two sequences of 12 ids (< 512, the stories260K and preset:tiny vocabulary).
at::Tensor test_tokens() {
  return at::tensor({1, 403, 407, 261, 378, 300, 1,   45,  90,  33, 500, 2,
                     1, 17,  260, 19,  350, 301, 299, 258, 430, 6,  7,   128},
                    at::kLong)
      .view({2, 12});
}

llt::LoadedModel load(const std::string& model, const std::string& adapter = "") {
  llt::LoadedModel m = llt::load_model(model, llt::LoadOptions{});
  if (!adapter.empty()) llt::load_adapter(adapter, *m.model);
  m.model->eval();
  return m;
}

at::Tensor logits_of(llt::LoadedModel& m) {
  at::NoGradGuard no_grad;
  return m.model->forward(test_tokens());
}

// A LoRA adapter for stories260K on every linear map (rank 4, alpha 8) with a random B, so that
// merging changes every kind of weight, q/k (whose rows HF permutes) included.
fs::path make_adapter(const fs::path& dir) {
  llt::LoadedModel m = load(kStoriesBin);
  llt::LoraOptions options;
  options.rank = 4;
  options.alpha = 8;
  options.dropout = 0;
  options.targets = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  at::manual_seed(5);
  llt::apply_lora(*m.model, options);
  auto g = at::detail::createCPUGenerator(11);
  at::NoGradGuard no_grad;
  for (auto& [name, p] : llt::lora_parameters(*m.model)) {
    if (name.size() > 6 && name.substr(name.size() - 6) == "lora_b") p.normal_(0, 0.05, g);
  }
  const fs::path adapter = dir / "adapter";
  llt::save_adapter(adapter, *m.model, options);
  return adapter;
}

void expect_same_parameters(llt::LoadedModel& a, llt::LoadedModel& b) {
  const auto pa = a.model->named_parameters();
  const auto pb = b.model->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    const at::Tensor* other = pb.find(item.key());
    ASSERT_NE(other, nullptr) << item.key();
    EXPECT_TRUE(at::equal(item.value(), *other)) << item.key();
  }
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Entries of a folder (names), to see that nothing was left behind.
std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Runs `command` through the shell: its output and pclose's wait status (WEXITSTATUS 0: ok).
llt::testing::ToolRun run_shell(const std::string& command) {
  llt::testing::ToolRun r;
  FILE* pipe = popen(command.c_str(), "r");
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) r.output.append(buf, n);
  r.code = pclose(pipe);
  return r;
}

std::string export_command(const std::string& args) {
  return "llt-export --threads 1 " + args;
}

// The text whose ids the client check compares with llt's tokenizer's.
const char* const kText = "Once upon a time, Lily saw a big red ball.";

// Writes llt's logits of what was exported, stories260K (with `adapter` merged in memory by
// merge_lora, if given: the model the export must hold), and llt's ids of kText with its
// tokenizer, as check_export*.py read them.
fs::path write_llt_logits(const std::string& adapter, const fs::path& path) {
  llt::LoadedModel m = load(kStoriesBin, adapter);
  llt::merge_lora(*m.model);
  const auto ids = llt::Tokenizer::load(kTok512).encode(kText, /*bos=*/true, /*eos=*/false);
  const at::Tensor text_ids = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()));
  llt::write_safetensors(
      path, {{"tokens", test_tokens()}, {"logits", logits_of(m)}, {"text_ids", text_ids}});
  return path;
}

nlohmann::json read_json(const fs::path& path) {
  return nlohmann::json::parse(llt::read_file(path));
}

// Why the client venv (scripts/client-venv.sh) is not there, for a client test's skip.
std::string no_venv_reason(const fs::path& venv) {
  const fs::path skip = venv.string() + ".skip";
  return "no client venv at " + venv.string() + ": " +
         (fs::exists(skip) ? llt::read_file(skip) : "scripts/client-venv.sh did not run");
}

}  // namespace

// ----- the library

TEST(ExportWeights, PresetTensorsAreTheOnesLoadModelDrawsAndComeInOrder) {
  llt::LoadedModel loaded = load("preset:tiny");
  llt::WeightsReader reader("preset:tiny", 0);
  EXPECT_EQ(reader.stored_dtype(), at::kFloat);
  for (const auto& item : loaded.model->named_parameters()) {
    EXPECT_TRUE(at::equal(reader.read(item.key()), item.value())) << item.key();
  }
  llt::WeightsReader again("preset:tiny", 0);
  EXPECT_THROW(again.read("norm.weight"), llt::RuntimeError);  // drawn in parameter order only
}

TEST(ExportWeights, ParseByteSizeTakesHuggingFaceUnitsAndRefusesTheRest) {
  EXPECT_EQ(llt::parse_byte_size("5GB"), int64_t{5'000'000'000});
  EXPECT_EQ(llt::parse_byte_size("500MB"), int64_t{500'000'000});
  EXPECT_EQ(llt::parse_byte_size("2GiB"), int64_t{2} << 30);
  EXPECT_EQ(llt::parse_byte_size("100kb"), int64_t{100'000});
  EXPECT_EQ(llt::parse_byte_size("1.5 MiB"), int64_t{1572864});
  EXPECT_EQ(llt::parse_byte_size("1000"), int64_t{1000});
  for (const char* bad :
       {"", "0", "0.5", "-1GB", "5XB", "GB", "1e9", "nan", "inf", "1..5MB", "0x10", "5 G B"}) {
    EXPECT_FALSE(llt::parse_byte_size(bad).has_value()) << bad;
  }
}

TEST(ExportWeights, ShardsAreCutAsTransformersCutsThem) {
  using Plan = std::vector<std::vector<size_t>>;
  EXPECT_EQ(llt::plan_shards({3, 3, 3}, 6), (Plan{{0, 1}, {2}}));
  EXPECT_EQ(llt::plan_shards({3, 3, 3}, 100), (Plan{{0, 1, 2}}));
  EXPECT_EQ(llt::plan_shards({10, 1, 1}, 5), (Plan{{0}, {1, 2}}));  // too big: a shard alone
  EXPECT_EQ(llt::plan_shards({1, 10, 1}, 5), (Plan{{0}, {1}, {2}}));
}

// ----- the tool: Hugging Face folders llt reads back

TEST(LltExport, PresetTinyLoadsBackBitwise) {
  TempDir dir;
  const fs::path out = dir.path / "hf";
  const auto r = run_tool(export_command("--model preset:tiny --tokenizer " + kTok512 +
                                         " --output " + out.string() + "/"));  // "hf/" is "hf"
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(entries(out), (std::set<std::string>{"config.json", "generation_config.json",
                                                 "model.safetensors", "special_tokens_map.json",
                                                 "tokenizer.model", "tokenizer_config.json"}));
  EXPECT_EQ(entries(dir.path), std::set<std::string>{"hf"});  // no staging folder left
  llt::SafetensorsFile file(out / "model.safetensors");
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  const auto config = read_json(out / "config.json");
  EXPECT_EQ(config["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(config["torch_dtype"], "float32");
  EXPECT_EQ(config["num_key_value_heads"], 4);
  EXPECT_EQ(llt::read_file(out / "tokenizer.model"), llt::read_file(kTok512));
  llt::LoadedModel exported = load(out.string());
  llt::LoadedModel preset = load("preset:tiny");
  EXPECT_EQ(exported.format, llt::WeightsFormat::kHuggingFace);
  expect_same_parameters(exported, preset);
  EXPECT_TRUE(at::equal(logits_of(exported), logits_of(preset)));
}

TEST(LltExport, MergedAdapterGivesTheLogitsOfTheBaseWithTheAdapter) {
  TempDir dir;
  const fs::path adapter = make_adapter(dir.path);
  const fs::path out = dir.path / "merged";
  const auto r =
      run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 + " --adapter " +
                              adapter.string() + " --output " + out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  llt::LoadedModel exported = load(out.string());
  EXPECT_TRUE(exported.args.tie_embeddings);  // stories260K shares its classifier
  EXPECT_FALSE(llt::SafetensorsFile(out / "model.safetensors").find("lm_head.weight"));
  // The same merge in memory (merge_lora: W + alpha/r B A in fp32, stored in W's fp32): bitwise.
  llt::LoadedModel merged = load(kStoriesBin, adapter.string());
  llt::merge_lora(*merged.model);
  expect_same_parameters(exported, merged);
  const at::Tensor exported_logits = logits_of(exported);
  EXPECT_TRUE(at::equal(exported_logits, logits_of(merged)));
  // Against the adapter applied at run time (x W^T + alpha/r (x A^T) B^T): the merge's rounding.
  // Logits here are up to ~15; measured 1.1e-5 on this machine.
  llt::LoadedModel with_adapter = load(kStoriesBin, adapter.string());
  const at::Tensor adapter_logits = logits_of(with_adapter);
  const double merge_rounding = max_abs_diff(exported_logits, adapter_logits);
  std::cout << "merged vs adapter at run time: max |logit difference| " << merge_rounding << "\n";
  EXPECT_LE(merge_rounding, 1e-4);
  llt::LoadedModel base = load(kStoriesBin);
  EXPECT_GT(max_abs_diff(adapter_logits, logits_of(base)), 1e-2);  // the adapter does something

  // llt-perplexity reads the folder as it reads any HF checkpoint.
  const std::string text = std::string(LLT_TEST_ASSETS) + "/perplexity/story.txt";
  const auto folder = run_tool("llt-perplexity --threads 1 --model " + out.string() + " --text " +
                               text + " --output " + (dir.path / "ppl-export").string());
  ASSERT_EQ(folder.code, 0) << folder.output;
  const auto runtime =
      run_tool("llt-perplexity --threads 1 --model " + kStoriesBin + " --tokenizer " + kTok512 +
               " --adapter " + adapter.string() + " --text " + text + " --output " +
               (dir.path / "ppl-adapter").string());
  ASSERT_EQ(runtime.code, 0) << runtime.output;
  const double nll_export = read_json(dir.path / "ppl-export/perplexity.json")["mean_nll"];
  const double nll_adapter = read_json(dir.path / "ppl-adapter/perplexity.json")["mean_nll"];
  EXPECT_NEAR(nll_export, nll_adapter, 1e-5);
}

TEST(LltExport, SmallMaxShardSizeGivesShardsAndAnIndexListingEachTensorOnce) {
  TempDir dir;
  const fs::path out = dir.path / "sharded";
  const auto r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                         " --max-shard-size 100KB --output " + out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  const auto index = read_json(out / "model.safetensors.index.json");
  std::set<std::string> files;
  for (const auto& [name, file] : index["weight_map"].items())
    files.insert(file.get<std::string>());
  ASSERT_GE(files.size(), 3u);
  int64_t total = 0;
  std::set<std::string> seen;
  for (size_t k = 0; k < files.size(); ++k) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", k + 1, files.size());
    ASSERT_TRUE(files.count(name)) << name;
    llt::SafetensorsFile shard(out / name);
    EXPECT_EQ(shard.metadata().at("format"), "pt");
    int64_t bytes = 0;
    for (const auto& info : shard.tensors()) {
      EXPECT_TRUE(seen.insert(info.name).second) << info.name << " in two shards";
      EXPECT_EQ(index["weight_map"][info.name], name) << info.name;
      bytes += c10::multiply_integers(info.shape) * 4;
    }
    EXPECT_TRUE(bytes <= 100'000 || shard.tensors().size() == 1) << name << ": " << bytes;
    total += bytes;
  }
  EXPECT_EQ(seen.size(), index["weight_map"].size());
  EXPECT_EQ(index["metadata"]["total_size"], total);
  llt::LoadedModel exported = load(out.string());
  llt::LoadedModel base = load(kStoriesBin);
  expect_same_parameters(exported, base);
  EXPECT_TRUE(at::equal(logits_of(exported), logits_of(base)));
}

TEST(LltExport, Bf16ExportHoldsTheBaseRoundedOnce) {
  TempDir dir;
  const fs::path out = dir.path / "bf16";
  const auto r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                         " --dtype bf16 --output " + out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_json(out / "config.json")["torch_dtype"], "bfloat16");
  llt::LoadOptions bf16;
  bf16.dtype = at::kBFloat16;
  llt::LoadedModel exported = llt::load_model(out, bf16);
  llt::LoadedModel base = llt::load_model(kStoriesBin, bf16);  // fp32 -> bf16 on load, once
  expect_same_parameters(exported, base);
}

// ----- the tool: Meta's layout

TEST(ExportWeights, PthPickleReadsBackWithLltsTorchSaveReader) {
  const std::vector<llt::TensorInfo> infos = {
      {"tok_embeddings.weight", at::kBFloat16, {300, 64}},
      {"norm.weight", at::kFloat, {64}},
      {"big", at::kHalf, {70000, 40000}},  // numel past 2^31: pickled as LONG1
  };
  const auto records = llt::parse_torch_pickle(llt::torch_state_dict_pickle(infos), "test");
  ASSERT_EQ(records.size(), infos.size());
  for (size_t i = 0; i < infos.size(); ++i) {
    EXPECT_EQ(records[i].name, infos[i].name);
    EXPECT_EQ(records[i].dtype, infos[i].dtype);
    EXPECT_EQ(records[i].sizes, infos[i].shape);
    EXPECT_EQ(records[i].storage_key, std::to_string(i));
    EXPECT_EQ(records[i].storage_numel, c10::multiply_integers(infos[i].shape));
    EXPECT_EQ(records[i].storage_offset, 0);
  }
  EXPECT_EQ(records[0].strides, (std::vector<int64_t>{64, 1}));
}

TEST(LltExport, MetaFormatLoadsBackWithTheSameLogits) {
  TempDir dir;
  for (const auto& [model, tokenizer] :
       {std::pair<std::string, std::string>{"preset:tiny", kTok512}, {kStoriesBin, kTok512}}) {
    const fs::path out = dir.path / (model == kStoriesBin ? "stories" : "tiny");
    const auto r = run_tool(export_command("--model " + model + " --tokenizer " + tokenizer +
                                           " --format meta --output " + out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(entries(out),
              (std::set<std::string>{"consolidated.00.pth", "params.json", "tokenizer.model"}));
    llt::LoadedModel exported = load(out.string());
    llt::LoadedModel original = load(model);
    EXPECT_EQ(exported.format, llt::WeightsFormat::kMeta);
    EXPECT_FALSE(exported.args.tie_embeddings);  // Meta's layout has output.weight, always
    EXPECT_EQ(exported.args.ffn_hidden(), original.args.ffn_hidden());
    EXPECT_TRUE(at::equal(logits_of(exported), logits_of(original))) << model;
  }
  EXPECT_FALSE(read_json(dir.path / "stories/params.json").contains("max_seq_len"));
}

// ----- the tool: full fine-tuning runs

class LltExportRun : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto data =
        run_tool("llt-tokenize --tokenizer " + kTok512 + " --output " +
                 (dir_.path / "data").string() + " --first 8 --max-len 320 --threads 1");
    ASSERT_EQ(data.code, 0) << data.output;
  }
  llt::testing::ToolRun finetune(const fs::path& run, const std::string& extra) {
    return run_tool("llt-finetune --model " + kStoriesBin + " --data " +
                    (dir_.path / "data").string() + " --output " + run.string() +
                    " --threads 1 --grad-accum 1 --max-steps 2 --lr 1e-3 --log-every 0 " + extra);
  }
  TempDir dir_;
};

TEST_F(LltExportRun, FullFineTuningRunExportsItsTrainedWeightsFromTheRunOrStepFolder) {
  const fs::path run = dir_.path / "full";
  const auto trained = finetune(run, "--lora-rank 0");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const fs::path step = run / "checkpoints" / "step-2";
  ASSERT_TRUE(fs::exists(step / "trainable.safetensors"));
  for (const auto& [given, out] : {std::pair<fs::path, fs::path>{run, dir_.path / "from-run"},
                                   {step, dir_.path / "from-step"}}) {
    const auto r = run_tool(export_command("--run " + given.string() + " --tokenizer " + kTok512 +
                                           " --output " + out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  EXPECT_EQ(llt::read_file(dir_.path / "from-run/model.safetensors"),
            llt::read_file(dir_.path / "from-step/model.safetensors"));
  // The base with the trained tensors copied in is what the export holds.
  llt::LoadedModel exported = load((dir_.path / "from-run").string());
  llt::LoadedModel expected = load(kStoriesBin);
  llt::SafetensorsFile file(step / "trainable.safetensors");
  at::NoGradGuard no_grad;
  double changed = 0;
  for (auto& item : expected.model->named_parameters()) {
    const at::Tensor t = file.read(item.key());
    changed = std::max(changed, max_abs_diff(t, item.value()));
    item.value().copy_(t);
  }
  EXPECT_GT(changed, 1e-5);  // training moved the weights
  expect_same_parameters(exported, expected);
  EXPECT_TRUE(at::equal(logits_of(exported), logits_of(expected)));
}

TEST_F(LltExportRun, LoraRunIsReferredToItsAdapter) {
  const fs::path run = dir_.path / "lora";
  const auto trained = finetune(run, "--lora-rank 2");
  ASSERT_EQ(trained.code, 0) << trained.output;
  const auto r = run_tool(export_command("--run " + run.string() + " --tokenizer " + kTok512 +
                                         " --output " + (dir_.path / "out").string()));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find("--adapter"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_.path / "out"));
  const auto merged = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                              " --adapter " + (run / "adapter").string() +
                                              " --output " + (dir_.path / "out").string()));
  EXPECT_EQ(merged.code, 0) << merged.output;
}

// ----- the tool: errors

TEST(LltExport, BadInputIsOneLineExitOneAndLeavesNothing) {
  TempDir dir;
  const fs::path adapter = make_adapter(dir.path);  // for stories260K's 5 layers
  const fs::path taken = dir.path / "taken";
  fs::create_directories(taken);
  std::ofstream(taken / "precious.txt") << "mine\n";
  const std::string base = "--model " + kStoriesBin + " --tokenizer " + kTok512 + " ";
  const std::string out = " --output " + (dir.path / "out").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {base + "--adapter " + (dir.path / "no-such-adapter").string() + out, "no-such-adapter"},
      {"--model preset:tiny --tokenizer " + kTok512 + " --adapter " + adapter.string() + out,
       "n_layers"},
      {base + "--output " + taken.string(), "--overwrite"},
      {base + "--max-shard-size 0" + out, "--max-shard-size"},
      {base + "--max-shard-size 5XB" + out, "--max-shard-size"},
      {base + "--max-shard-size -1GB" + out, "--max-shard-size"},
      {base + "--max-shard-size abc" + out, "--max-shard-size"},
      {"--model " + kStoriesBin + " --tokenizer " + kLlama2Tokenizer + out, "vocab_size"},
      {"--tokenizer " + kTok512 + out, "--model"},
      {"--model preset:tiny" + out, "--tokenizer"},
      {base + "--run " + dir.path.string() + out, "checkpoints"},  // not a run folder
      {base + "--format pth" + out, "--format"},
      {base + "--dtype fp64" + out, "--dtype"},
  };
  const auto before = entries(dir.path);
  for (const auto& [args, needle] : cases) {
    const auto r = run_tool(export_command(args));
    EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
    EXPECT_EQ(entries(dir.path), before) << args << "\n" << r.output;
  }
  EXPECT_EQ(llt::read_file(taken / "precious.txt"), "mine\n");
}

TEST(LltExport, OverwriteReplacesAnExistingFolderOnlyOnceTheNewOneIsWhole) {
  TempDir dir;
  const fs::path out = dir.path / "out";
  fs::create_directories(out);  // an empty folder is fine without --overwrite
  const std::string args =
      "--model " + kStoriesBin + " --tokenizer " + kTok512 + " --output " + out.string();
  ASSERT_EQ(run_tool(export_command(args)).code, 0);
  std::ofstream(out / "stale.txt") << "old\n";
  EXPECT_EQ(run_tool(export_command(args)).code, 1);
  EXPECT_TRUE(fs::exists(out / "stale.txt"));
  const auto r = run_tool(export_command(args + " --overwrite --dtype bf16"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out / "stale.txt"));
  EXPECT_EQ(read_json(out / "config.json")["torch_dtype"], "bfloat16");
  EXPECT_EQ(entries(dir.path), std::set<std::string>{"out"});
}

// A write that fails (here: the file-size limit, as a full disk would) exits 2 and removes the
// staging folder; an export killed mid-way leaves its staging folder, which the next export to
// the same --output removes.
TEST(LltExport, AFailedWriteLeavesNothingAndAKilledOneIsCleanedUpNextTime) {
  TempDir dir;
  const std::string tool = std::string(LLT_BINARY_DIR) + "/bin/" +
                           export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                          " --output " + (dir.path / "out").string());
  auto shell = [](const std::string& command) {
    return run_shell("sh -c '" + command + "' 2>&1");  // code: the raw wait status
  };
  // 200 blocks of 512 bytes: stories260K's 1 MB of tensors do not fit.
  const auto failed = shell("trap \"\" XFSZ; ulimit -f 200; exec " + tool);
  ASSERT_TRUE(WIFEXITED(failed.code)) << failed.output;
  EXPECT_EQ(WEXITSTATUS(failed.code), 2) << failed.output;
  EXPECT_EQ(count_lines(failed.output), 1) << failed.output;
  EXPECT_NE(failed.output.find("disk full"), std::string::npos) << failed.output;
  EXPECT_TRUE(fs::is_empty(dir.path)) << failed.output;

  const auto killed = shell("ulimit -f 200; exec " + tool);  // SIGXFSZ kills it mid-write
  EXPECT_FALSE(WIFEXITED(killed.code) && WEXITSTATUS(killed.code) == 0) << killed.output;
  const auto left = entries(dir.path);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left.begin()->rfind(".out.llt-export-", 0), 0u) << *left.begin();
  const auto again = shell("exec " + tool);
  EXPECT_EQ(again.code, 0) << again.output;
  EXPECT_EQ(entries(dir.path), std::set<std::string>{"out"});
}

// ----- independent readers

// data_prep/check_export.py: safetensors parsed by hand, q/k rows un-permuted, the reference
// forward of data_prep/llama_reference.py; fp32 throughout, so the bound is the two forwards'
// own rounding (measured 1.2e-5 on logits up to ~15). llt's logits are the exported model's
// (the base, the adapter merged in memory), not the folder's: every reader of a folder with q/k
// rows in the wrong order agrees with every other, but not with the model.
TEST(ExportReference, PythonReferenceGivesLltsLogitsOnTheStoriesExport) {
  TempDir dir;
  const fs::path adapter = make_adapter(dir.path);
  for (const auto& [name, extra] :
       {std::pair<std::string, std::string>{"plain", ""},
        {"merged-sharded", " --adapter " + adapter.string() + " --max-shard-size 200KB"},
        {"merged-meta", " --adapter " + adapter.string() + " --format meta"}}) {
    const fs::path out = dir.path / name;
    const auto r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                           extra + " --output " + out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    const fs::path logits =
        write_llt_logits(name == "plain" ? "" : adapter.string(), dir.path / (name + ".logits"));
    const std::string check = std::string(LLT_PYTHON) + " " + LLT_SOURCE_DIR +
                              "/data_prep/check_export.py " + out.string() + " " + logits.string() +
                              " --atol 1e-4 2>&1";
    const auto checked = run_shell(check);
    EXPECT_EQ(checked.code, 0) << name << ": " << checked.output;
    std::cout << name << ": " << checked.output;
  }
}

// transformers' LlamaForCausalLM.from_pretrained on the export, in the client venv
// (scripts/client-venv.sh); fp32, so the bound is the forwards' own rounding (measured 1.9e-5 on
// logits up to ~15); and its tokenizer gives llt's ids.
TEST(ExportClients, TransformersLoadsTheStoriesExportWithLltsLogits) {
  const fs::path venv = LLT_CLIENT_VENV;
  if (!fs::exists(venv / ".complete")) GTEST_SKIP() << no_venv_reason(venv);
  TempDir dir;
  const fs::path adapter = make_adapter(dir.path);
  std::string pairs;
  for (const auto& [name, extra] :
       {std::pair<std::string, std::string>{"plain", ""},
        {"merged-sharded", " --adapter " + adapter.string() + " --max-shard-size 200KB"}}) {
    const fs::path out = dir.path / name;
    const auto r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                           extra + " --output " + out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    const fs::path logits =
        write_llt_logits(name == "plain" ? "" : adapter.string(), dir.path / (name + ".logits"));
    pairs += " " + out.string() + " " + logits.string();
  }
  // And torch 2.11's torch.load (weights_only by default) reads the Meta layout's .pth.
  const fs::path meta = dir.path / "meta";
  const auto r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                         " --format meta --output " + meta.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto checked =
      run_shell((venv / "bin/python").string() + " " + LLT_SOURCE_DIR +
                "/data_prep/check_export_transformers.py --atol 1e-4 --text '" + kText +
                "' --pth " + (meta / "consolidated.00.pth").string() + pairs + " 2>&1");
  EXPECT_EQ(checked.code, 0) << checked.output;
  EXPECT_NE(checked.output.find("torch.load gives 48 tensors, ['torch.float32']"),
            std::string::npos)
      << checked.output;
  std::cout << checked.output;
}

// PEFT both ways, with peft itself (data_prep/check_peft.py in the client venv):
// PeftModel.from_pretrained puts llt's adapter-peft/ on the exported base and gives llt's logits;
// adapters peft made (get_peft_model + save_pretrained on the export, every lora_B drawn), one on
// every linear map and one on q, k and down_proj of blocks 1 and 3 only, load into llt with
// peft's logits, and so does llt-export's merge of each. fp32: the bound is the forwards' own
// rounding, as for transformers above.
TEST(ExportClients, PeftLoadsLltsAdapterAndLltLoadsPeftsOwn) {
  const fs::path venv = LLT_CLIENT_VENV;
  if (!fs::exists(venv / ".complete")) GTEST_SKIP() << no_venv_reason(venv);
  TempDir dir;
  const fs::path base = dir.path / "base";
  auto r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                   " --output " + base.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  // llt's adapter in PEFT's layout, as llt-finetune writes adapter-peft/.
  const fs::path adapter = make_adapter(dir.path);
  const fs::path adapter_peft = dir.path / "adapter-peft";
  {
    llt::LoadedModel m = llt::load_model(kStoriesBin, llt::LoadOptions{});
    const llt::LoraOptions options = llt::load_adapter(adapter, *m.model);
    llt::export_peft_adapter(adapter_peft, *m.model, options, "", m.model->args().n_layers);
  }
  const fs::path llt_logits = write_llt_logits(adapter.string(), dir.path / "llt.logits");
  const fs::path all = dir.path / "peft-all";
  const fs::path some = dir.path / "peft-some";
  const std::string b = base.string() + " ";
  const auto checked =
      run_shell((venv / "bin/python").string() + " " + LLT_SOURCE_DIR + "/data_prep/check_peft.py" +
                " --atol 1e-4 --on " + b + adapter_peft.string() + " " + llt_logits.string() +
                " --make " + b + all.string() + " " + llt_logits.string() +
                " all q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" + " --make " + b +
                some.string() + " " + llt_logits.string() + " 1,3 q_proj,k_proj,down_proj 2>&1");
  ASSERT_EQ(checked.code, 0) << checked.output;
  std::cout << checked.output;

  for (const fs::path& made : {all, some}) {
    llt::SafetensorsFile peft_out(made.string() + ".logits");
    const at::Tensor expected = peft_out.read("logits");
    ASSERT_TRUE(at::equal(peft_out.read("tokens"), test_tokens()));
    llt::LoadedModel plain = load(kStoriesBin);
    const double moved = max_abs_diff(logits_of(plain), expected);
    // The adapter as --adapter loads it.
    llt::LoadedModel m = load(kStoriesBin, made.string());
    const double diff = max_abs_diff(logits_of(m), expected);
    // The adapter merged by llt-export, then the folder loaded.
    const fs::path merged = dir.path / (made.filename().string() + "-merged");
    r = run_tool(export_command("--model " + kStoriesBin + " --tokenizer " + kTok512 +
                                " --adapter " + made.string() + " --output " + merged.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    llt::LoadedModel folder = load(merged.string());
    const double merged_diff = max_abs_diff(logits_of(folder), expected);
    std::cout << made.filename().string() << ": max |llt - peft| = " << diff << ", exported merged "
              << merged_diff << " (the adapter moves them by " << moved << ")\n";
    EXPECT_LE(diff, 1e-4) << made;
    EXPECT_LE(merged_diff, 1e-4) << made;
    EXPECT_GT(moved, 1e-2) << made;
  }
}
