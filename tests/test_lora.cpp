// LoRA: a fresh adapter leaves the logits bitwise unchanged; merging equals the unmerged adapter;
// only adapter parameters train; the 7B trainable count; adapter save/load; the Hugging Face PEFT
// export against tests/assets/lora/peft_export.json (data_prep/make_lora_goldens.py) and read back.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/model.h"
#include "llt/safetensors.h"

#include "test_support.h"

namespace llt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using testing::expect_input_error;
using testing::TempDir;

Transformer tiny_model(uint64_t seed = 7) {
  Transformer model(preset_args("tiny"), torch::TensorOptions().dtype(torch::kFloat));
  model->init_random(seed);
  return model;
}

torch::Tensor tokens() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  return at::randint(512, {2, 12}, gen, torch::TensorOptions().dtype(torch::kLong));
}

// Same bits (not just equal values: -0 and +0 differ).
bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         torch::equal(a.contiguous().view(torch::kInt), b.contiguous().view(torch::kInt));
}

LoraOptions all_targets(int64_t rank = 4) {
  LoraOptions o;
  o.rank = rank;
  o.targets = lora_target_names();
  return o;
}

// Gives every lora_b random values so the adapters change the output.
void randomize_b(TransformerImpl& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& [name, p] : lora_parameters(model)) {
    if (name.size() > 7 && name.substr(name.size() - 7) == ".lora_b") {
      p.copy_(0.05 * at::normal(0.0, 1.0, p.sizes(), gen));
    }
  }
}

TEST(Lora, FreshAdapterLeavesLogitsBitwiseUnchanged) {
  for (const LoraOptions& options : {LoraOptions{}, all_targets()}) {
    auto model = tiny_model();
    model->eval();
    const auto base = model->forward(tokens());
    apply_lora(*model, options);
    model->eval();
    EXPECT_TRUE(bitwise_equal(model->forward(tokens()), base));
    model->train();  // dropout draws masks, but B = 0 still adds exact zeros
    EXPECT_TRUE(bitwise_equal(model->forward(tokens()), base));
  }
}

TEST(Lora, ReplacesTargetsInEveryBlockAndKeepsMetaNames) {
  auto model = tiny_model();
  std::set<std::string> before;
  for (const auto& item : model->named_parameters()) before.insert(item.key());
  apply_lora(*model, LoraOptions{});
  std::set<std::string> after, expected = before;
  for (const auto& item : model->named_parameters()) after.insert(item.key());
  for (int layer = 0; layer < 2; ++layer) {
    for (const std::string t : {"wq", "wv"}) {
      const std::string p = "layers." + std::to_string(layer) + ".attention." + t;
      expected.insert(p + ".lora_a");
      expected.insert(p + ".lora_b");
    }
  }
  EXPECT_EQ(after, expected);
  // The typed members point at the registered modules.
  EXPECT_NE(dynamic_cast<LoraLinearImpl*>(model->block(1).attention->wq.get()), nullptr);
  EXPECT_NE(dynamic_cast<LoraLinearImpl*>(model->block(1).attention->wv.get()), nullptr);
  EXPECT_EQ(dynamic_cast<LoraLinearImpl*>(model->block(1).attention->wk.get()), nullptr);
  EXPECT_EQ(model->block(0).attention->named_children()["wq"].get(),
            model->block(0).attention->wq.get());
  const auto& lora = dynamic_cast<LoraLinearImpl&>(*model->block(0).attention->wq);
  EXPECT_EQ(lora.lora_a.sizes(), (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(lora.lora_b.sizes(), (std::vector<int64_t>{64, 16}));
  EXPECT_DOUBLE_EQ(lora.scale, 2.0);
  EXPECT_TRUE(torch::equal(lora.lora_b, torch::zeros_like(lora.lora_b)));
  // Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)).
  const double bound = 1.0 / std::sqrt(64.0);
  EXPECT_LE(lora.lora_a.abs().max().item<double>(), bound);
  EXPECT_GT(lora.lora_a.abs().max().item<double>(), 0.9 * bound);
}

TEST(Lora, OnlyAdapterParametersRequireAndGetGradients) {
  auto model = tiny_model();
  apply_lora(*model, all_targets());
  randomize_b(*model, 3);  // with B = 0, A's gradient would be exactly zero
  model->train();
  model->forward(tokens()).pow(2).mean().backward();
  int adapters = 0;
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    const bool adapter = name.find(".lora_") != std::string::npos;
    adapters += adapter;
    EXPECT_EQ(item.value().requires_grad(), adapter) << name;
    EXPECT_EQ(item.value().grad().defined(), adapter) << name;
    if (adapter) EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0) << name;
  }
  EXPECT_EQ(adapters, 2 * 7 * 2);
  EXPECT_EQ(lora_parameters(*model).size(), 28u);
}

TEST(Lora, MergedModelEqualsAdapterWithinTolerance) {
  auto model = tiny_model();
  apply_lora(*model, all_targets());
  randomize_b(*model, 5);
  model->eval();
  const auto with_adapter = model->forward(tokens());
  const auto base = tiny_model()->forward(tokens());
  ASSERT_GT((with_adapter - base).abs().max().item<double>(), 1e-3);  // the adapter matters

  merge_lora(*model);
  EXPECT_FALSE(has_lora(*model));
  std::set<std::string> names;
  for (const auto& item : model->named_parameters()) names.insert(item.key());
  std::set<std::string> meta;
  for (const auto& [name, shape] : parameter_shapes(model->args())) meta.insert(name);
  EXPECT_EQ(names, meta);
  // fp32 reassociation only: |logits| < 1, measured max difference 3.6e-7.
  EXPECT_LT((model->forward(tokens()) - with_adapter).abs().max().item<double>(), 1e-5);
}

TEST(Lora, DropoutOnlyInTrainMode) {
  auto model = tiny_model();
  LoraOptions options;
  options.dropout = 0.5;
  apply_lora(*model, options);
  randomize_b(*model, 9);
  model->eval();
  EXPECT_TRUE(bitwise_equal(model->forward(tokens()), model->forward(tokens())));
  model->train();
  EXPECT_FALSE(torch::equal(model->forward(tokens()), model->forward(tokens())));
}

TEST(Lora, TrainableCountFromArgs) {
  // r (in + out) per target and layer: 32 layers x 2 x 16 x (4096 + 4096).
  EXPECT_EQ(count_lora_parameters(preset_args("llama2_7b"), LoraOptions{}), 8'388'608);
  auto model = tiny_model();
  apply_lora(*model, all_targets(3));
  int64_t numel = 0;
  for (const auto& [name, p] : lora_parameters(*model)) numel += p.numel();
  EXPECT_EQ(count_lora_parameters(model->args(), all_targets(3)), numel);
}

TEST(Lora, RejectsBadOptions) {
  auto model = tiny_model();
  LoraOptions bad;
  bad.targets = {"wq", "q_proj"};
  EXPECT_THROW(apply_lora(*model, bad), InputError);
  bad.targets = {"wq", "wq"};
  EXPECT_THROW(apply_lora(*model, bad), InputError);
  bad = LoraOptions{};
  bad.rank = 0;
  EXPECT_THROW(apply_lora(*model, bad), InputError);
  bad = LoraOptions{};
  bad.dropout = 1.0;
  EXPECT_THROW(apply_lora(*model, bad), InputError);
  EXPECT_FALSE(has_lora(*model));
  apply_lora(*model, LoraOptions{});
  EXPECT_THROW(apply_lora(*model, LoraOptions{}), RuntimeError);
}

TEST(Lora, SaveLoadRoundTrip) {
  TempDir dir;
  const LoraOptions options = all_targets(5);
  auto trained = tiny_model();
  apply_lora(*trained, options);
  randomize_b(*trained, 21);
  trained->eval();
  const auto expected = trained->forward(tokens());
  save_adapter(dir.path / "adapter", *trained, options);

  auto fresh = tiny_model();  // same base weights, no LoRA yet
  const LoraOptions loaded = load_adapter(dir.path / "adapter", *fresh);
  EXPECT_EQ(loaded.rank, 5);
  EXPECT_EQ(loaded.targets, options.targets);
  EXPECT_DOUBLE_EQ(loaded.alpha, options.alpha);
  EXPECT_DOUBLE_EQ(loaded.dropout, options.dropout);
  const auto a = lora_parameters(*trained), b = lora_parameters(*fresh);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(bitwise_equal(a[i].second, b[i].second)) << a[i].first;
  }
  fresh->eval();
  EXPECT_TRUE(bitwise_equal(fresh->forward(tokens()), expected));

  // Loading into a model that already has matching LoRA works; a different rank does not.
  EXPECT_NO_THROW(load_adapter(dir.path / "adapter", *fresh));
  auto other = tiny_model();
  apply_lora(*other, all_targets(4));
  EXPECT_THROW(load_adapter(dir.path / "adapter", *other), InputError);
}

TEST(Lora, LoadRejectsBadAdapters) {
  TempDir dir;
  auto model = tiny_model();
  apply_lora(*model, LoraOptions{});
  save_adapter(dir.path, *model, LoraOptions{});
  EXPECT_THROW(load_adapter(dir.path / "missing", *tiny_model()), InputError);

  // A tensor missing, then a tensor too many.
  auto params = lora_parameters(*model);
  NamedTensors tensors(params.begin(), params.end());
  tensors.pop_back();
  write_safetensors(dir.path / "adapter.safetensors", tensors);
  EXPECT_THROW(load_adapter(dir.path, *tiny_model()), InputError);
  tensors.assign(params.begin(), params.end());
  tensors.emplace_back("layers.0.attention.wk.lora_a", torch::zeros({16, 64}));
  write_safetensors(dir.path / "adapter.safetensors", tensors);
  EXPECT_THROW(load_adapter(dir.path, *tiny_model()), InputError);

  // A 1-layer model cannot take a 2-layer adapter.
  ModelArgs one = preset_args("tiny");
  one.n_layers = 1;
  Transformer small(one, torch::TensorOptions());
  save_adapter(dir.path, *model, LoraOptions{});
  EXPECT_THROW(load_adapter(dir.path, *small), InputError);
}

TEST(Lora, LoadRejectsNumbersOfTheWrongKindInTheConfig) {
  // nlohmann's get<int64_t>() truncates 2.5 to 2 and is undefined behaviour on 1e300 (found by
  // fuzz/fuzz_adapter.cpp): both must be refused, naming the file and the field.
  TempDir dir;
  auto model = tiny_model();
  apply_lora(*model, LoraOptions{});
  save_adapter(dir.path, *model, LoraOptions{});
  const fs::path config_path = dir.path / "adapter_config.json";
  const json good = json::parse(std::ifstream(config_path));
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"rank", 2.5}, {"rank", 1e300}, {"format_version", 1e300}, {"n_layers", -1e19}}) {
    SCOPED_TRACE(key + " = " + value.dump());
    json bad = good;
    bad[key] = value;
    std::ofstream(config_path, std::ios::trunc) << bad.dump();
    llt::testing::expect_input_error([&] { load_adapter(dir.path, *tiny_model()); },
                                     {config_path.string(), "'" + key + "'"});
  }
}

TEST(Lora, KeptFuzzInputFormatVersion1e300IsRefused) {
  // fuzz/crashes/adapter/ (found by fuzz/fuzz_adapter.cpp): adapter_config.json, the fuzz
  // target's part separator, adapter.safetensors (empty here).
  const std::string input =
      read_file(fs::path(LLT_SOURCE_DIR) / "fuzz/crashes/adapter/ub-format-version-1e300.bin");
  const std::string separator = "\n--llt-fuzz-part--\n";  // fuzz/fuzz_input.h kPartSeparator
  const size_t at = input.find(separator);
  ASSERT_NE(at, std::string::npos);
  TempDir dir;
  std::ofstream(dir.path / "adapter_config.json", std::ios::binary) << input.substr(0, at);
  std::ofstream(dir.path / "adapter.safetensors", std::ios::binary)
      << input.substr(at + separator.size());
  llt::testing::expect_input_error(
      [&] { load_adapter(dir.path, *tiny_model()); },
      {(dir.path / "adapter_config.json").string(), "'format_version'", "wrong type"});
}

TEST(Lora, PeftExportMatchesPythonReference) {
  std::ifstream in(fs::path(LLT_TEST_ASSETS) / "lora" / "peft_export.json");
  ASSERT_TRUE(in) << "missing tests/assets/lora/peft_export.json";
  const json golden = json::parse(in);
  LoraOptions options;
  options.rank = golden["lora"]["rank"];
  options.alpha = golden["lora"]["alpha"];
  options.dropout = golden["lora"]["dropout"];
  options.targets = golden["lora"]["targets"].get<std::vector<std::string>>();

  auto model = tiny_model();
  apply_lora(*model, options);
  randomize_b(*model, 1);
  {  // layer 0's B = arange(out * r).reshape(out, r), as the reference
    torch::NoGradGuard no_grad;
    for (const std::string t : {"wq", "wk", "wv"}) {
      auto& lora = dynamic_cast<LoraLinearImpl&>(t == "wq"   ? *model->block(0).attention->wq
                                                 : t == "wk" ? *model->block(0).attention->wk
                                                             : *model->block(0).attention->wv);
      lora.lora_b.copy_(at::arange(lora.lora_b.numel(), torch::kFloat).view(lora.lora_b.sizes()));
    }
  }
  TempDir dir;
  export_peft_adapter(dir.path, *model, options, "meta-llama/Llama-2-7b-hf",
                      model->args().n_layers);

  SafetensorsFile file(dir.path / "adapter_model.safetensors");
  std::map<std::string, std::vector<int64_t>> keys;
  for (const auto& info : file.tensors()) keys[info.name] = info.shape;
  EXPECT_EQ(keys, (golden["keys"].get<std::map<std::string, std::vector<int64_t>>>()));

  const std::string layer0 = "base_model.model.model.layers.0.self_attn.";
  for (const auto& [proj, rows] : golden["layer0_lora_B_hf"].items()) {
    const auto expected = rows.get<std::vector<std::vector<float>>>();
    const auto b = file.read(layer0 + proj + ".lora_B.weight");
    ASSERT_EQ(b.size(0), static_cast<int64_t>(expected.size())) << proj;
    for (size_t r = 0; r < expected.size(); ++r) {
      for (size_t c = 0; c < expected[r].size(); ++c) {
        ASSERT_EQ(b[r][c].item<float>(), expected[r][c]) << proj << " row " << r;
      }
    }
  }
  // lora_A is not permuted: HF permutes output rows only.
  const auto& wq = dynamic_cast<LoraLinearImpl&>(*model->block(1).attention->wq);
  EXPECT_TRUE(torch::equal(
      file.read("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"), wq.lora_a));

  std::ifstream config_in(dir.path / "adapter_config.json");
  const json config = json::parse(config_in);
  for (const auto& [key, value] : golden["adapter_config"].items()) {
    EXPECT_EQ(config.at(key), value) << key;
  }
}

// llt adapter -> PEFT layout -> llt: the same parameters bit for bit, so the same logits. The
// tiny preset has grouped K/V heads (8 q, 4 kv): both q and k row permutations are undone.
TEST(Lora, PeftAdapterRoundTripGivesIdenticalLogits) {
  LoraOptions options = all_targets(3);
  options.alpha = 12.5;
  auto trained = tiny_model();
  apply_lora(*trained, options);
  randomize_b(*trained, 5);
  trained->eval();
  const auto expected = trained->forward(tokens());
  TempDir dir;
  export_peft_adapter(dir.path, *trained, options, "", trained->args().n_layers);
  const json config = json::parse(read_file(dir.path / "adapter_config.json"));
  EXPECT_TRUE(config["base_model_name_or_path"].is_null());
  EXPECT_TRUE(config["lora_alpha"].is_number_float());
  EXPECT_FALSE(config.contains("layers_to_transform"));

  auto fresh = tiny_model();
  const LoraOptions loaded = load_adapter(dir.path, *fresh);
  EXPECT_EQ(loaded.rank, 3);
  EXPECT_EQ(loaded.targets, options.targets);
  EXPECT_DOUBLE_EQ(loaded.alpha, 12.5);
  const auto a = lora_parameters(*trained), b = lora_parameters(*fresh);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(a[i].second, b[i].second)) << a[i].first;
  }
  fresh->eval();
  EXPECT_TRUE(bitwise_equal(fresh->forward(tokens()), expected));
}

// A model cut to its first block (--n-layers 1) exports layers_to_transform [0]; on the full
// base, the block without an adapter gets B = 0 and the loaded model equals LoRA on block 0 only.
TEST(Lora, PeftAdapterOfFewerLayersAdaptsOnlyThose) {
  LoraOptions options = all_targets(2);
  options.alpha = 8;
  ModelArgs one = preset_args("tiny");
  one.n_layers = 1;
  Transformer small(one, torch::TensorOptions().dtype(torch::kFloat));
  small->init_random(3);
  apply_lora(*small, options);
  randomize_b(*small, 9);
  TempDir dir;
  export_peft_adapter(dir.path, *small, options, "meta-llama/Llama-2-7b-hf", 2);
  const json config = json::parse(read_file(dir.path / "adapter_config.json"));
  EXPECT_EQ(config["layers_to_transform"], json::array({0}));
  EXPECT_TRUE(config["lora_alpha"].is_number_integer()) << config["lora_alpha"];
  EXPECT_EQ(config["base_model_name_or_path"], "meta-llama/Llama-2-7b-hf");

  auto full = tiny_model();
  load_adapter(dir.path, *full);
  const auto from = lora_parameters(*small);
  std::map<std::string, torch::Tensor> loaded;
  for (const auto& [name, p] : lora_parameters(*full)) loaded[name] = p;
  for (const auto& [name, p] : from) {
    EXPECT_TRUE(bitwise_equal(loaded.at(name), p)) << name;
  }
  for (const auto& [name, p] : loaded) {
    if (name.rfind("layers.1.", 0) == 0 && name.size() > 7 &&
        name.substr(name.size() - 7) == ".lora_b") {
      EXPECT_EQ(p.abs().max().item<float>(), 0.0f) << name;
    }
  }
  // Block 1 left as the base: the same logits as the base with block 0 adapted by hand.
  auto expected = tiny_model();
  apply_lora(*expected, options);
  {
    torch::NoGradGuard no_grad;
    std::map<std::string, torch::Tensor> mine;
    for (const auto& [name, p] : lora_parameters(*expected)) mine[name] = p;
    for (const auto& [name, p] : loaded) mine.at(name).copy_(p);
  }
  full->eval();
  expected->eval();
  EXPECT_TRUE(bitwise_equal(full->forward(tokens()), expected->forward(tokens())));
}

// What a Hugging Face PEFT adapter may hold that llt does not compute is refused by name.
// The config's target_modules are the adapter's targets, none added: a PEFT adapter on q, k and
// down_proj (peft's own made one found llt adding its default wv).
TEST(Lora, PeftAdapterTargetsAreTheConfigsAlone) {
  LoraOptions options = all_targets(2);
  options.targets = {"wq", "wk", "w2"};
  auto model = tiny_model();
  apply_lora(*model, options);
  randomize_b(*model, 4);
  TempDir dir;
  export_peft_adapter(dir.path, *model, options, "", model->args().n_layers);
  auto loaded = tiny_model();
  const LoraOptions read = load_adapter(dir.path, *loaded);
  EXPECT_EQ(read.targets, options.targets);
  EXPECT_EQ(read_adapter(dir.path, loaded->args()).modules.size(),
            static_cast<size_t>(3 * loaded->args().n_layers));
  for (const auto& [name, p] : lora_parameters(*model)) {
    bool found = false;
    for (const auto& [other, q] : lora_parameters(*loaded)) {
      if (other == name) found = bitwise_equal(p, q);
    }
    EXPECT_TRUE(found) << name;
  }
  EXPECT_EQ(lora_parameters(*loaded).size(), lora_parameters(*model).size());
}

TEST(Lora, PeftAdaptersLltCannotComputeAreRefused) {
  LoraOptions options = all_targets(2);
  auto model = tiny_model();
  apply_lora(*model, options);
  TempDir dir;
  export_peft_adapter(dir.path, *model, options, "", model->args().n_layers);
  const fs::path config_path = dir.path / "adapter_config.json";
  const json good = json::parse(read_file(config_path));
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"use_dora", true}}, "'use_dora'"},
      {{{"use_rslora", true}}, "'use_rslora'"},
      {{{"bias", "lora_only"}}, "'bias'"},
      {{{"lora_bias", true}}, "'lora_bias'"},
      {{{"modules_to_save", json::array({"lm_head"})}}, "'modules_to_save'"},
      {{{"rank_pattern", {{"q_proj", 8}}}}, "'rank_pattern'"},
      {{{"alpha_pattern", {{"q_proj", 8}}}}, "'alpha_pattern'"},
      {{{"alora_invocation_tokens", json::array({5, 6})}}, "'alora_invocation_tokens'"},
      {{{"target_parameters", json::array({"experts.gate_up_proj"})}}, "'target_parameters'"},
      {{{"exclude_modules", json::array({"layers.0.self_attn.q_proj"})}}, "'exclude_modules'"},
      {{{"use_qalora", true}}, "'use_qalora'"},
      {{{"peft_type", "PREFIX_TUNING"}}, "'peft_type'"},
      {{{"target_modules", "q_proj|v_proj"}}, "'target_modules'"},
      {{{"target_modules", json::array({"q_proj", "lm_head"})}}, "'lm_head'"},
      {{{"layers_to_transform", json::array({0, 5})}}, "layer 5"},
      {{{"r", 0}}, "rank"},
  };
  for (const auto& [patch, needle] : cases) {
    json config = good;
    config.update(patch);
    write_file(config_path, config.dump());
    expect_input_error([&] { load_adapter(dir.path, *tiny_model()); },
                       {config_path.string(), needle});
  }
  // The weights of another rank than the config says.
  json config = good;
  config["r"] = 3;
  write_file(config_path, config.dump());
  expect_input_error([&] { load_adapter(dir.path, *tiny_model()); },
                     {"adapter_model.safetensors", "lora_A.weight", "shape"});
  // Neither weights file.
  write_file(config_path, good.dump());
  fs::remove(dir.path / "adapter_model.safetensors");
  expect_input_error([&] { load_adapter(dir.path, *tiny_model()); }, {"adapter_model.safetensors"});
}

}  // namespace
}  // namespace llt
