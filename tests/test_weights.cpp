// Loading model weights: every on-disk format written by data_prep/make_checkpoint_fixtures.py
// (Python's torch.save, a hand-written safetensors writer, llama2.c's legacy export layout) loads
// to the Python reference weights and gives identical logits; format detection from content;
// n_layers reads only the kept layers; Meta's and HF's quirks; and every malformed input is an
// InputError naming the file.
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/pth.h"
#include "llt/safetensors.h"
#include "llt/weight_names.h"
#include "llt/weights.h"

namespace fs = std::filesystem;
using llt::WeightsFormat;

namespace {

const fs::path kAssets = fs::path(LLT_TEST_ASSETS) / "checkpoints";
// Inputs the fuzzers found (fuzz/README.md), kept in the tree: scripts/fuzz.sh replays them under
// ASan + UBSan, and the tests below replay them here, since CI does not fuzz.
const fs::path kFuzzCrashes = fs::path(LLT_SOURCE_DIR) / "fuzz" / "crashes";

using llt::testing::TempDir;

// A copy of the fixture `name` (file or directory) inside `dir`, writable.
fs::path copy_fixture(const TempDir& dir, const std::string& name, const std::string& as = "") {
  const fs::path target = dir.path / (as.empty() ? name : as);
  fs::copy(kAssets / name, target, fs::copy_options::recursive);
  fs::permissions(target, fs::perms::owner_write, fs::perm_options::add);
  if (fs::is_directory(target)) {
    for (const auto& e : fs::directory_iterator(target)) {
      fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    }
  }
  return target;
}

template <class F>
std::string input_error(F f) {
  try {
    f();
  } catch (const llt::InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an llt::InputError";
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The fp32 reference weights (Meta names) and golden tensors, written by Python.
const std::map<std::string, at::Tensor>& reference() {
  static const std::map<std::string, at::Tensor> tensors = [] {
    llt::SafetensorsFile file(kAssets / "reference.safetensors");
    std::map<std::string, at::Tensor> out;
    for (const auto& info : file.tensors()) out[info.name] = file.read(info.name);
    return out;
  }();
  return tensors;
}

llt::LoadedModel load(const fs::path& path, int64_t n_layers = 0,
                      c10::ScalarType dtype = at::kFloat) {
  llt::LoadOptions options;
  options.dtype = dtype;
  options.n_layers = n_layers;
  return llt::load_model(path, options);
}

std::map<std::string, at::Tensor> parameters(const llt::LoadedModel& loaded) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : loaded.model->named_parameters()) out[item.key()] = item.value();
  return out;
}

// Every parameter equals the reference weight rounded through `stored` (the file's dtype) and
// converted to the parameter's dtype, bit for bit.
void expect_reference_weights(const llt::LoadedModel& loaded, c10::ScalarType stored) {
  const auto params = parameters(loaded);
  size_t expected_count = 0;
  for (const auto& [name, shape] : llt::parameter_shapes(loaded.args)) {
    SCOPED_TRACE(name);
    ++expected_count;
    ASSERT_TRUE(params.count(name));
    const at::Tensor& got = params.at(name);
    const at::Tensor want = reference().at(name).to(stored).to(got.scalar_type());
    EXPECT_EQ(got.sizes().vec(), shape);
    EXPECT_TRUE(at::equal(got, want))
        << "max diff " << (got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<float>();
  }
  EXPECT_EQ(params.size(), expected_count);
}

at::Tensor golden_logits(llt::LoadedModel loaded) {  // by value: forward() is not const
  at::NoGradGuard no_grad;
  return loaded.model->forward(reference().at("golden.tokens").unsqueeze(0))[0];
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Formats load to the reference

TEST(Weights, FixtureArgsComeFromEachFormatsOwnConfig) {
  for (const char* name : {"meta_bf16", "meta_bf16_2shards", "meta_fp32", "hf_fp16", "hf_fp32",
                           "hf_bin_fp16", "llama2c.bin", "llama2c_tied.bin"}) {
    SCOPED_TRACE(name);
    const llt::ModelArgs args = llt::read_model_args(kAssets / name);
    EXPECT_EQ(args.dim, 32);
    EXPECT_EQ(args.n_layers, 2);
    EXPECT_EQ(args.n_heads, 4);
    EXPECT_EQ(args.kv_heads(), 2);
    EXPECT_EQ(args.vocab_size, 64);  // Meta: params.json says -1, taken from tok_embeddings
    EXPECT_EQ(args.ffn_hidden(), 48);
    EXPECT_DOUBLE_EQ(args.norm_eps, 1e-5);
    EXPECT_EQ(args.tie_embeddings, std::string(name) == "llama2c_tied.bin");
  }
  EXPECT_EQ(llt::read_model_args(kAssets / "llama2c.bin").max_seq_len, 32);
  EXPECT_EQ(llt::read_model_args(kAssets / "hf_fp32").max_seq_len, 32);
  // Meta's FFN size comes from multiple_of and ffn_dim_multiplier alone (48 = 16 * ceil(42/16)).
  const llt::ModelArgs meta = llt::read_model_args(kAssets / "meta_fp32");
  EXPECT_EQ(meta.hidden_dim, 0);
  EXPECT_EQ(meta.multiple_of, 16);
  EXPECT_DOUBLE_EQ(meta.ffn_dim_multiplier, 0.5);
}

TEST(Weights, Fp32SourcesLoadExactlyToTheReference) {
  for (const char* name : {"meta_fp32", "hf_fp32", "llama2c.bin"}) {
    SCOPED_TRACE(name);
    expect_reference_weights(load(kAssets / name), at::kFloat);
  }
}

TEST(Weights, HalfSourcesLoadToTheReferenceRoundedLikePython) {
  for (const char* name : {"meta_bf16", "meta_bf16_2shards"}) {
    SCOPED_TRACE(name);
    expect_reference_weights(load(kAssets / name), at::kBFloat16);
    expect_reference_weights(load(kAssets / name, 0, at::kBFloat16), at::kBFloat16);
  }
  for (const char* name : {"hf_fp16", "hf_bin_fp16"}) {
    SCOPED_TRACE(name);
    expect_reference_weights(load(kAssets / name), at::kHalf);
    // fp16 file -> bf16 parameters: converted per tensor.
    const auto loaded = load(kAssets / name, 0, at::kBFloat16);
    EXPECT_EQ(loaded.model->tok_embeddings->weight.scalar_type(), at::kBFloat16);
    expect_reference_weights(loaded, at::kHalf);
  }
}

TEST(Weights, FilesWrittenByPyTorch2ReadTheSame) {
  // Re-saved by torch.save of PyTorch 2.11 (adds byteorder, .format_version, .storage_alignment).
  expect_reference_weights(load(kAssets / "meta_bf16_torch2"), at::kBFloat16);
  expect_reference_weights(load(kAssets / "hf_bin_fp16_torch2"), at::kHalf);
}

TEST(Weights, Llama2cSharedClassifierIsATiedModel) {
  const auto loaded = load(kAssets / "llama2c_tied.bin");
  EXPECT_TRUE(loaded.args.tie_embeddings);
  EXPECT_EQ(loaded.model->output, nullptr);
  const auto params = parameters(loaded);
  EXPECT_EQ(params.count("output.weight"), 0u);
  expect_reference_weights(loaded, at::kFloat);  // everything but output.weight
}

TEST(Weights, LogitsAgreeAcrossFormatsAndWithThePythonModel) {
  const at::Tensor meta = golden_logits(load(kAssets / "meta_fp32"));
  // Same fp32 weights, same code: bitwise equal, whatever the file layout.
  EXPECT_TRUE(at::equal(meta, golden_logits(load(kAssets / "hf_fp32"))));
  EXPECT_TRUE(at::equal(meta, golden_logits(load(kAssets / "llama2c.bin"))));
  // data_prep/llama_reference.py on the same weights (different arithmetic: within fp32 noise).
  const at::Tensor& python = reference().at("golden.logits");
  EXPECT_TRUE(at::allclose(meta, python, /*rtol=*/0, /*atol=*/1e-5))
      << (meta - python).abs().max().item<float>();
  // Rounded weights: equal within a format family, close to fp32.
  const at::Tensor bf16 = golden_logits(load(kAssets / "meta_bf16"));
  EXPECT_TRUE(at::equal(bf16, golden_logits(load(kAssets / "meta_bf16_2shards"))));
  const at::Tensor fp16 = golden_logits(load(kAssets / "hf_fp16"));
  EXPECT_TRUE(at::equal(fp16, golden_logits(load(kAssets / "hf_bin_fp16"))));
  EXPECT_TRUE(at::allclose(bf16, python, 0, 0.1));  // measured 0.045
  EXPECT_TRUE(at::allclose(fp16, python, 0, 0.02));  // measured 0.0056
}

TEST(Weights, MetaTwoShardsEqualOneShard) {
  const auto one = parameters(load(kAssets / "meta_bf16"));
  const auto two = parameters(load(kAssets / "meta_bf16_2shards"));
  ASSERT_EQ(one.size(), two.size());
  for (const auto& [name, tensor] : one) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(at::equal(tensor, two.at(name)));
  }
}

// ---------------------------------------------------------------------------------------------
// Detection

TEST(Weights, DetectsFormats) {
  EXPECT_EQ(llt::detect_format(kAssets / "meta_bf16"), WeightsFormat::kMeta);
  EXPECT_EQ(llt::detect_format(kAssets / "meta_bf16" / "consolidated.00.pth"),
            WeightsFormat::kMeta);
  EXPECT_EQ(llt::detect_format(kAssets / "hf_fp16"), WeightsFormat::kHuggingFace);
  EXPECT_EQ(llt::detect_format(kAssets / "hf_fp32" / "model.safetensors"),
            WeightsFormat::kHuggingFace);
  EXPECT_EQ(llt::detect_format(kAssets / "hf_bin_fp16"), WeightsFormat::kHuggingFace);
  EXPECT_EQ(llt::detect_format(kAssets / "llama2c.bin"), WeightsFormat::kLlama2c);
  EXPECT_EQ(llt::format_name(WeightsFormat::kMeta), "meta");
  EXPECT_EQ(llt::format_name(WeightsFormat::kHuggingFace), "huggingface");
  EXPECT_EQ(llt::format_name(WeightsFormat::kLlama2c), "llama2c");
}

TEST(Weights, DetectsFromContentNotNames) {
  TempDir dir;
  // A llama2.c file named like the other formats' weights.
  for (const char* misleading : {"model.safetensors", "consolidated.00.pth"}) {
    SCOPED_TRACE(misleading);
    const fs::path sub = dir.path / ("as_" + std::string(misleading));
    fs::create_directories(sub);
    fs::copy_file(kAssets / "llama2c.bin", sub / misleading);
    EXPECT_EQ(llt::detect_format(sub / misleading), WeightsFormat::kLlama2c);
    expect_reference_weights(load(sub / misleading), at::kFloat);
  }
  // A Meta shard named like a llama2.c file, given as a file.
  const fs::path meta = copy_fixture(dir, "meta_fp32");
  fs::rename(meta / "consolidated.00.pth", meta / "weights.bin");
  EXPECT_EQ(llt::detect_format(meta / "weights.bin"), WeightsFormat::kMeta);
  // HF weights whose names swap safetensors and torch.save: each is read by its content.
  const fs::path st_as_bin = copy_fixture(dir, "hf_fp32", "st_as_bin");
  fs::rename(st_as_bin / "model.safetensors", st_as_bin / "pytorch_model.bin");
  expect_reference_weights(load(st_as_bin), at::kFloat);
  const fs::path bin_as_st = copy_fixture(dir, "hf_bin_fp16", "bin_as_st");
  fs::rename(bin_as_st / "pytorch_model.bin", bin_as_st / "model.safetensors");
  expect_reference_weights(load(bin_as_st), at::kHalf);
  // Not model weights at all.
  std::ofstream(dir.path / "notes.txt") << "just some text, long enough to have a header\n";
  EXPECT_TRUE(
      contains(input_error([&] { llt::detect_format(dir.path / "notes.txt"); }), "notes.txt"));
  fs::create_directories(dir.path / "empty");
  EXPECT_TRUE(contains(input_error([&] { llt::detect_format(dir.path / "empty"); }),
                       "neither params.json"));
  EXPECT_TRUE(
      contains(input_error([&] { llt::detect_format(dir.path / "missing"); }), "no such file"));
}

// ---------------------------------------------------------------------------------------------
// n_layers

TEST(Weights, NLayersOneNeverReadsLayerOneMeta) {
  // The fixture's zip lacks layer 1's storage records: only a reader that skips them succeeds.
  const fs::path path = kAssets / "meta_bf16_no_layer1";
  const auto loaded = load(path, /*n_layers=*/1);
  EXPECT_EQ(loaded.args.n_layers, 1);
  EXPECT_EQ(loaded.model->layers->size(), 1u);
  expect_reference_weights(loaded, at::kBFloat16);
  const std::string error = input_error([&] { load(path); });
  EXPECT_TRUE(contains(error, "consolidated.00.pth")) << error;
  EXPECT_TRUE(contains(error, "layers.1.")) << error;
}

TEST(Weights, NLayersOneNeverReadsLayerOneHuggingFace) {
  TempDir dir;
  const fs::path hf = copy_fixture(dir, "hf_fp32");
  const fs::path weights = hf / "model.safetensors";
  {  // Overwrite every layer-1 tensor's bytes with 0xff (NaN in fp32).
    llt::SafetensorsFile file(weights);
    std::fstream out(weights, std::ios::in | std::ios::out | std::ios::binary);
    for (const auto& info : file.tensors()) {
      if (info.name.rfind("model.layers.1.", 0) != 0) continue;
      const auto [begin, end] = file.byte_range(info.name);
      out.seekp(static_cast<std::streamoff>(begin));
      out << std::string(end - begin, '\xff');
    }
  }
  expect_reference_weights(load(hf, /*n_layers=*/1), at::kFloat);
  // Loading everything does read the damaged bytes (so the check above can fail).
  const auto all = parameters(load(hf));
  EXPECT_TRUE(at::isnan(all.at("layers.1.attention.wq.weight")).all().item<bool>());
}

TEST(Weights, NLayersOneKeepsTheFirstLayerOfEveryFormat) {
  for (const char* name : {"meta_fp32", "meta_bf16_2shards", "hf_fp16", "llama2c.bin"}) {
    SCOPED_TRACE(name);
    const auto loaded = load(kAssets / name, 1);
    EXPECT_EQ(loaded.args.n_layers, 1);
    const auto params = parameters(loaded);
    EXPECT_EQ(params.count("layers.1.attention.wq.weight"), 0u);
    const at::Tensor& wq = params.at("layers.0.attention.wq.weight");
    EXPECT_TRUE(at::allclose(wq, reference().at("layers.0.attention.wq.weight"), 0, 1e-2));
    EXPECT_TRUE(at::allclose(params.at("output.weight"), reference().at("output.weight"), 0, 1e-2));
  }
  EXPECT_TRUE(contains(input_error([] { load(kAssets / "meta_fp32", 3); }), "n-layers 3"));
  EXPECT_TRUE(contains(input_error([] { load(kAssets / "meta_fp32", -1); }), "n-layers -1"));
}

// ---------------------------------------------------------------------------------------------
// Names, permutation, configuration quirks

TEST(Weights, UnpermuteHfRowsInvertsTransformersPermute) {
  // One head of hd = 4: Meta rows (pairs (0,1), (2,3)) are HF rows [0, 2, 1, 3]; per head.
  const at::Tensor meta_rows = at::arange(16, at::kFloat).view({8, 2});
  const at::Tensor hf_rows = llt::permute_hf_rows(meta_rows, /*n_heads=*/2);
  const at::Tensor order = at::tensor({0, 2, 1, 3, 4, 6, 5, 7}, at::kLong);
  EXPECT_TRUE(at::equal(hf_rows, meta_rows.index_select(0, order)));
  EXPECT_TRUE(at::equal(llt::unpermute_hf_rows(hf_rows, 2), meta_rows));
  // With one head of hd = 8 the order is different: the head count matters (n_kv_heads for wk).
  EXPECT_FALSE(at::equal(llt::permute_hf_rows(meta_rows, 1), hf_rows));
  // The fixture's wk (permuted by transformers' permute() with n_kv_heads = 2) needs 2 heads.
  llt::SafetensorsFile hf(kAssets / "hf_fp32" / "model.safetensors");
  const at::Tensor wk = hf.read("model.layers.0.self_attn.k_proj.weight");
  const at::Tensor& want = reference().at("layers.0.attention.wk.weight");
  EXPECT_TRUE(at::equal(llt::unpermute_hf_rows(wk, 2), want));
  EXPECT_FALSE(at::equal(llt::unpermute_hf_rows(wk, 4), want));
  const at::Tensor wq = hf.read("model.layers.0.self_attn.q_proj.weight");
  EXPECT_TRUE(
      at::equal(llt::unpermute_hf_rows(wq, 4), reference().at("layers.0.attention.wq.weight")));
}

TEST(Weights, NameTableMapsBothWaysWithSuffixes) {
  const std::pair<const char*, const char*> pairs[] = {
      {"model.embed_tokens.weight", "tok_embeddings.weight"},
      {"model.norm.weight", "norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"model.layers.0.self_attn.q_proj.weight", "layers.0.attention.wq.weight"},
      {"model.layers.31.self_attn.o_proj.weight", "layers.31.attention.wo.weight"},
      {"model.layers.7.mlp.gate_proj.weight", "layers.7.feed_forward.w1.weight"},
      {"model.layers.7.mlp.down_proj.weight", "layers.7.feed_forward.w2.weight"},
      {"model.layers.7.mlp.up_proj.weight", "layers.7.feed_forward.w3.weight"},
      {"model.layers.2.input_layernorm.weight", "layers.2.attention_norm.weight"},
      {"model.layers.2.post_attention_layernorm.weight", "layers.2.ffn_norm.weight"},
      {"model.layers.3.self_attn.v_proj.lora_A.weight", "layers.3.attention.wv.lora_A.weight"},
  };
  for (const auto& [hf, meta] : pairs) {
    EXPECT_EQ(llt::hf_to_meta_name(hf).value_or("?"), meta);
    EXPECT_EQ(llt::meta_to_hf_name(meta).value_or("?"), hf);
  }
  for (const char* unknown : {"model.layers.0.self_attn.rotary_emb.inv_freq", "rope.freqs",
                              "model.layers.x.mlp.up_proj.weight", "model.layers.0.mlp.weight",
                              "model.embed_tokens", "layers.0.attention.wq.weight"}) {
    EXPECT_FALSE(llt::hf_to_meta_name(unknown).has_value()) << unknown;
  }
  EXPECT_TRUE(llt::is_known_non_weight("rope.freqs"));
  EXPECT_TRUE(llt::is_known_non_weight("model.layers.12.self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(llt::is_known_non_weight("model.layers.12.self_attn.q_proj.weight"));
}

TEST(Weights, Real7bHfConfigAndIndexMatchThe7bPreset) {
  const fs::path dir = kAssets / "llama-2-7b-hf";  // copied from meta-llama/Llama-2-7b-hf
  const llt::ModelArgs args = llt::read_model_args(dir);
  const llt::ModelArgs preset = llt::preset_args("llama2_7b");
  EXPECT_EQ(args.dim, preset.dim);
  EXPECT_EQ(args.n_layers, preset.n_layers);
  EXPECT_EQ(args.n_heads, preset.n_heads);
  EXPECT_EQ(args.kv_heads(), preset.kv_heads());
  EXPECT_EQ(args.vocab_size, preset.vocab_size);
  EXPECT_EQ(args.ffn_hidden(), preset.ffn_hidden());
  EXPECT_DOUBLE_EQ(args.norm_eps, preset.norm_eps);
  EXPECT_DOUBLE_EQ(args.rope_theta, preset.rope_theta);
  EXPECT_EQ(args.tie_embeddings, preset.tie_embeddings);
  EXPECT_EQ(args.max_seq_len, 2048);  // the file's max_position_embeddings (Llama-2 does 4096)

  std::ifstream in(dir / "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(in);
  std::set<std::string> mapped;
  size_t skipped = 0;
  for (const auto& item : index["weight_map"].items()) {
    if (llt::is_known_non_weight(item.key())) {
      ++skipped;
      continue;
    }
    const auto meta = llt::hf_to_meta_name(item.key());
    ASSERT_TRUE(meta.has_value()) << item.key();
    EXPECT_EQ(llt::meta_to_hf_name(*meta).value_or("?"), item.key());
    EXPECT_TRUE(mapped.insert(*meta).second) << "two HF names map to " << *meta;
  }
  EXPECT_EQ(skipped, 32u);  // one rotary_emb.inv_freq per layer
  std::set<std::string> expected;
  for (const auto& [name, shape] : llt::parameter_shapes(preset)) expected.insert(name);
  EXPECT_EQ(mapped, expected);
}

TEST(Weights, MetaParamsWithoutNKvHeadsMeansNHeads) {
  TempDir dir;
  const fs::path meta = copy_fixture(dir, "meta_fp32");
  std::ofstream(meta / "params.json", std::ios::trunc)
      << R"({"dim": 32, "multiple_of": 16, "ffn_dim_multiplier": 0.5, "n_heads": 4,)"
      << R"( "n_layers": 2, "norm_eps": 1e-05, "vocab_size": -1})";
  const llt::ModelArgs args = llt::read_model_args(meta);
  EXPECT_EQ(args.kv_heads(), 4);
  EXPECT_EQ(args.vocab_size, 64);
  // This fixture has 2 kv heads, so its wk no longer fits: the error names key and shapes.
  const std::string error = input_error([&] { load(meta); });
  EXPECT_TRUE(contains(error, "consolidated.00.pth")) << error;
  EXPECT_TRUE(contains(error, "'layers.0.attention.wk.weight'")) << error;
  EXPECT_TRUE(contains(error, "[16, 32]")) << error;
  EXPECT_TRUE(contains(error, "[32, 32]")) << error;
}

// ---------------------------------------------------------------------------------------------
// Missing, unexpected and mis-shaped tensors

namespace {

// HF weights in `dir` holding hf_fp32's tensors after `edit`.
fs::path hf_variant(const TempDir& dir, const std::string& name,
                    const std::function<void(llt::NamedTensors&)>& edit) {
  const fs::path out = dir.path / name;
  fs::create_directories(out);
  fs::copy_file(kAssets / "hf_fp32" / "config.json", out / "config.json");
  llt::SafetensorsFile source(kAssets / "hf_fp32" / "model.safetensors");
  llt::NamedTensors tensors;
  for (const auto& info : source.tensors()) tensors.emplace_back(info.name, source.read(info.name));
  edit(tensors);
  llt::write_safetensors(out / "model.safetensors", tensors);
  return out;
}

}  // namespace

TEST(Weights, MissingUnexpectedAndMisshapedTensorsNameFileKeyAndShapes) {
  TempDir dir;
  const fs::path unchanged = hf_variant(dir, "unchanged", [](llt::NamedTensors&) {});
  expect_reference_weights(load(unchanged), at::kFloat);  // the writer keeps it loadable

  const fs::path missing = hf_variant(dir, "missing", [](llt::NamedTensors& t) {
    t.erase(std::remove_if(
                t.begin(), t.end(),
                [](const auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; }),
            t.end());
  });
  std::string error = input_error([&] { load(missing); });
  EXPECT_TRUE(contains(error, missing.string())) << error;
  EXPECT_TRUE(contains(error, "missing tensor 'model.layers.1.mlp.up_proj.weight'")) << error;
  EXPECT_TRUE(contains(error, "[48, 32]")) << error;

  const fs::path unknown = hf_variant(dir, "unknown", [](llt::NamedTensors& t) {
    t.emplace_back("model.layers.0.self_attn.q_norm.weight", at::zeros({8}));
  });
  error = input_error([&] { load(unknown); });
  EXPECT_TRUE(contains(error, "model.safetensors")) << error;
  EXPECT_TRUE(contains(error, "unexpected tensor 'model.layers.0.self_attn.q_norm.weight'"))
      << error;

  const fs::path extra_layer = hf_variant(dir, "extra_layer", [](llt::NamedTensors& t) {
    t.emplace_back("model.layers.2.input_layernorm.weight", at::ones({32}));
  });
  error = input_error([&] { load(extra_layer); });
  EXPECT_TRUE(contains(error, "unexpected tensor 'model.layers.2.input_layernorm.weight'"))
      << error;
  error = input_error([&] { load(extra_layer, 1); });  // not a skipped layer either
  EXPECT_TRUE(contains(error, "model.layers.2.input_layernorm.weight")) << error;

  const fs::path misshaped = hf_variant(dir, "misshaped", [](llt::NamedTensors& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.layers.0.mlp.down_proj.weight") tensor = at::zeros({32, 40});
    }
  });
  error = input_error([&] { load(misshaped); });
  EXPECT_TRUE(contains(error, "model.safetensors")) << error;
  EXPECT_TRUE(contains(error, "'model.layers.0.mlp.down_proj.weight'")) << error;
  EXPECT_TRUE(contains(error, "[32, 40]")) << error;
  EXPECT_TRUE(contains(error, "[32, 48]")) << error;
}

TEST(Weights, MetaShardProblemsAreInputErrors) {
  TempDir dir;
  // One shard of two gone: the remaining halves do not fit the model.
  const fs::path half = copy_fixture(dir, "meta_bf16_2shards", "half");
  fs::remove(half / "consolidated.01.pth");
  std::string error = input_error([&] { load(half); });
  EXPECT_TRUE(contains(error, "consolidated.00.pth")) << error;
  EXPECT_TRUE(contains(error, "'tok_embeddings.weight' has shape [64, 16]")) << error;  // dim 1
  EXPECT_TRUE(contains(error, "expected [64, 32]")) << error;
  // A gap in the numbering.
  const fs::path gap = copy_fixture(dir, "meta_bf16_2shards", "gap");
  fs::rename(gap / "consolidated.01.pth", gap / "consolidated.02.pth");
  EXPECT_TRUE(contains(input_error([&] { load(gap); }), "consolidated.02.pth"));
  // Shards of different models.
  const fs::path mixed = copy_fixture(dir, "meta_bf16_2shards", "mixed");
  fs::copy_file(kAssets / "meta_bf16" / "consolidated.00.pth", mixed / "consolidated.01.pth",
                fs::copy_options::overwrite_existing);
  error = input_error([&] { load(mixed); });
  EXPECT_TRUE(contains(error, "consolidated.00.pth (+1 more shard)")) << error;
  EXPECT_TRUE(contains(error, "[64, 48]")) << error;  // 16 + 32 columns
  // No shard at all.
  const fs::path none = copy_fixture(dir, "meta_bf16", "none");
  fs::remove(none / "consolidated.00.pth");
  EXPECT_TRUE(contains(input_error([&] { load(none); }), "no consolidated.NN.pth"));
}

// ---------------------------------------------------------------------------------------------
// Truncated and corrupt files

TEST(Weights, TruncatedFilesAreInputErrorsNamingTheFile) {
  TempDir dir;
  struct Case {
    std::string fixture;
    std::string file;  // inside the fixture directory; empty: the fixture is the file
  };
  const Case cases[] = {{"meta_bf16", "consolidated.00.pth"},
                        {"hf_fp16", "model-00002-of-00002.safetensors"},
                        {"hf_bin_fp16", "pytorch_model.bin"},
                        {"llama2c.bin", ""}};
  for (const auto& c : cases) {
    const fs::path original = c.file.empty() ? kAssets / c.fixture : kAssets / c.fixture / c.file;
    const uint64_t size = fs::file_size(original);
    for (const uint64_t keep : {uint64_t{40}, size / 3, size / 2, size - 10, size - 1}) {
      SCOPED_TRACE(c.fixture + " kept " + std::to_string(keep) + " of " + std::to_string(size));
      const fs::path copy = copy_fixture(dir, c.fixture, c.fixture + "_" + std::to_string(keep));
      const fs::path damaged = c.file.empty() ? copy : copy / c.file;
      fs::resize_file(damaged, keep);
      const std::string error = input_error([&] { load(copy); });
      EXPECT_TRUE(contains(error, damaged.string())) << error;
    }
  }
}

TEST(Weights, CorruptConfigurationFilesAreInputErrors) {
  TempDir dir;
  const fs::path meta = copy_fixture(dir, "meta_bf16");
  std::ofstream(meta / "params.json", std::ios::trunc) << R"({"dim": 32, "n_layers": )";
  EXPECT_TRUE(contains(input_error([&] { load(meta); }), "params.json: not valid JSON"));
  std::ofstream(meta / "params.json", std::ios::trunc) << R"({"dim": "32", "n_layers": 2})";
  EXPECT_TRUE(contains(input_error([&] { load(meta); }), "field 'dim' must be an integer"));

  const fs::path hf = copy_fixture(dir, "hf_fp16");
  std::ofstream(hf / "config.json", std::ios::trunc) << "{";
  EXPECT_TRUE(contains(input_error([&] { load(hf); }), "config.json: not valid JSON"));
  fs::copy_file(kAssets / "hf_fp16" / "config.json", hf / "config.json",
                fs::copy_options::overwrite_existing);
  std::ofstream(hf / "model.safetensors.index.json", std::ios::trunc) << "[]";
  EXPECT_TRUE(contains(input_error([&] { load(hf); }), "weight_map"));
  std::ofstream(hf / "model.safetensors.index.json", std::ios::trunc)
      << R"({"weight_map": {"model.norm.weight": "gone.safetensors"}})";
  EXPECT_TRUE(contains(input_error([&] { load(hf); }), "gone.safetensors"));

  const fs::path scaled = copy_fixture(dir, "hf_fp32", "scaled");
  std::ifstream in(scaled / "config.json");
  auto config = nlohmann::json::parse(in);
  config["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  std::ofstream(scaled / "config.json", std::ios::trunc) << config.dump();
  EXPECT_TRUE(contains(input_error([&] { load(scaled); }), "rope_scaling"));
}

TEST(Weights, CorruptPthAndLlama2cFilesAreInputErrors) {
  TempDir dir;
  // Damage the pickle inside the zip: the callable's name no longer reads "_rebuild_tensor_v2".
  const fs::path meta = copy_fixture(dir, "meta_fp32");
  const fs::path shard = meta / "consolidated.00.pth";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find("_rebuild_tensor_v2");
    ASSERT_NE(at, std::string::npos);
    f.seekp(static_cast<std::streamoff>(at));
    f << "_rebuild_tensor_v9";
  }
  EXPECT_TRUE(contains(input_error([&] { load(meta); }), shard.string()));

  // Not a zip past its first bytes.
  const fs::path junk = copy_fixture(dir, "meta_bf16", "junk");
  std::ofstream(junk / "consolidated.00.pth", std::ios::trunc | std::ios::binary)
      << std::string("PK\x03\x04", 4) << std::string(500, 'x');
  EXPECT_TRUE(contains(input_error([&] { load(junk); }), "consolidated.00.pth"));

  // llama2.c: a header that no longer matches the size, and a version-1 export.
  const fs::path bin = copy_fixture(dir, "llama2c.bin");
  {
    std::fstream f(bin, std::ios::in | std::ios::out | std::ios::binary);
    const int32_t layers = 3;
    f.seekp(8);
    f.write(reinterpret_cast<const char*>(&layers), 4);
  }
  EXPECT_TRUE(contains(input_error([&] { load(bin); }), "implies"));
  {
    std::fstream f(bin, std::ios::in | std::ios::out | std::ios::binary);
    f.write("24ka", 4);  // export.py: struct.pack("I", 0x616b3432)
  }
  const std::string error = input_error([&] { load(bin); });
  EXPECT_TRUE(contains(error, "version >= 1")) << error;
}

TEST(Weights, Llama2cHeaderClaimingAMillionLayersIsRefusedAtOnce) {
  // 76 bytes claiming 2^20 - 1 layers: the implied size is checked before one entry per tensor
  // is made (which took 3.5 s for 2^17 layers; found by fuzz/fuzz_llama2c.cpp).
  TempDir dir;
  const int32_t header[7] = {32, 48, (1 << 20) - 1, 4, 2, 64, 32};
  const fs::path path = dir.path / "claims.bin";
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header), sizeof(header));
  out << std::string(48, '\0');
  out.close();
  const auto start = std::chrono::steady_clock::now();
  const std::string error = input_error([&] { load(path); });
  EXPECT_TRUE(contains(error, "implies")) << error;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(Weights, KeptFuzzInputLlama2cClaiming131072LayersIsRefusedAtOnce) {
  // fuzz/crashes/llama2c/: 76 bytes whose header claims 131072 layers. read_model_args reads the
  // header alone; loading took 3.5 s to refuse it, making an entry per tensor first.
  const fs::path path = kFuzzCrashes / "llama2c" / "slow-131072-layers-in-76-bytes.bin";
  ASSERT_TRUE(fs::exists(path)) << path;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(llt::read_model_args(path).n_layers, 131072);
  const std::string error = input_error([&] { load(path); });
  EXPECT_TRUE(contains(error, path.string())) << error;
  EXPECT_TRUE(contains(error, "n_layers 131072")) << error;
  EXPECT_TRUE(contains(error, "implies")) << error;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

// ---------------------------------------------------------------------------------------------
// The zip directory of a .pth, checked by llt before LibTorch's zip reader sees the archive

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void put_le(std::string& bytes, size_t at, uint64_t value, int n) {
  for (int i = 0; i < n; ++i) bytes[at + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

}  // namespace

TEST(Pth, EveryFixtureArchivePassesTheZipDirectoryCheck) {
  for (const auto& entry : fs::recursive_directory_iterator(kAssets)) {
    const auto ext = entry.path().extension();
    if (ext != ".pth" && entry.path().filename() != "pytorch_model.bin") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(llt::check_zip_directory(entry.path()));
  }
}

TEST(Pth, BadZipDirectoriesAreOneLineInputErrorsNamingTheFile) {
  TempDir dir;
  const std::string good = read_bytes(kAssets / "meta_bf16" / "consolidated.00.pth");
  const size_t end = good.rfind(std::string("PK\x05\x06", 4));     // end of central directory
  const size_t central = good.find(std::string("PK\x01\x02", 4));  // its first entry, data.pkl
  ASSERT_NE(end, std::string::npos);
  ASSERT_NE(central, std::string::npos);
  struct Case {
    std::string what;
    std::function<void(std::string&)> damage;
    std::string needle;
  };
  const Case cases[] = {
      {"directory past the end", [&](std::string& b) { put_le(b, end + 16, b.size() + 99, 4); },
       "central directory"},
      {"directory size too large", [&](std::string& b) { put_le(b, end + 12, 1 << 20, 4); },
       "central directory"},
      {"more entries than the directory holds",
       [&](std::string& b) {
         put_le(b, end + 8, 5000, 2);
         put_le(b, end + 10, 5000, 2);
       },
       "5000 entries"},
      {"local header inside the directory", [&](std::string& b) { put_le(b, central + 42, end, 4); },
       "local header"},
      {"entry larger than the file",
       [&](std::string& b) {
         put_le(b, central + 20, 1 << 30, 4);
         put_le(b, central + 24, 1 << 30, 4);
       },
       "run past"},
      {"compressed entry", [&](std::string& b) { put_le(b, central + 10, 8, 2); }, "compressed"},
      {"name with ..", [&](std::string& b) { b.replace(central + 46, 3, "../"); }, "'..'"},
      {"no end record", [&](std::string& b) { b.resize(end); }, "no end of central directory"},
  };
  for (size_t i = 0; i < std::size(cases); ++i) {
    SCOPED_TRACE(cases[i].what);
    std::string bytes = good;
    cases[i].damage(bytes);
    const fs::path path = dir.path / ("bad" + std::to_string(i) + ".pth");
    std::ofstream(path, std::ios::binary) << bytes;
    llt::testing::expect_input_error([&] { llt::PthFile file(path); },
                                     {path.string(), "not a readable torch.save zip archive",
                                      cases[i].needle});
  }
  const fs::path copy = dir.path / "good.pth";
  std::ofstream(copy, std::ios::binary) << good;
  EXPECT_EQ(llt::PthFile(copy).tensors().size(), 2u + 2u * 9u + 2u);
}

// ---------------------------------------------------------------------------------------------
// The pickle reader on its own

namespace {

std::string fixture_pickle(const fs::path& pth) {
  caffe2::serialize::PyTorchStreamReader reader(pth.string());
  const auto [data, size] = reader.getRecord("data.pkl");
  return std::string(static_cast<const char*>(data.get()), size);
}

}  // namespace

TEST(TorchPickle, ReadsWhatTorchSaveWrote) {
  // Plain dict, bf16 (Meta).
  const auto meta = llt::parse_torch_pickle(
      fixture_pickle(kAssets / "meta_bf16" / "consolidated.00.pth"), "meta");
  ASSERT_EQ(meta.size(), 2u + 2u * 9u + 2u);  // + rope.freqs
  EXPECT_EQ(meta.front().name, "tok_embeddings.weight");
  EXPECT_EQ(meta.front().dtype, at::kBFloat16);
  EXPECT_EQ(meta.front().sizes, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(meta.front().strides, (std::vector<int64_t>{32, 1}));
  EXPECT_EQ(meta.back().name, "rope.freqs");
  // A view at an offset in a larger storage, and a transposed tensor (the fp32 fixture).
  const auto strided = llt::parse_torch_pickle(
      fixture_pickle(kAssets / "meta_fp32" / "consolidated.00.pth"), "fp32");
  for (const auto& r : strided) {
    if (r.name == "norm.weight") {
      EXPECT_EQ(r.storage_offset, 5);
      EXPECT_EQ(r.storage_numel, 32 + 7);
    }
    if (r.name == "layers.0.attention.wo.weight") {
      EXPECT_EQ(r.strides, (std::vector<int64_t>{1, 32}));
    }
  }
  // OrderedDict with _metadata and an nn.Parameter (HF pytorch_model.bin), fp16.
  const auto hf =
      llt::parse_torch_pickle(fixture_pickle(kAssets / "hf_bin_fp16" / "pytorch_model.bin"), "hf");
  EXPECT_EQ(hf.back().name, "lm_head.weight");
  EXPECT_EQ(hf.back().dtype, at::kHalf);
}

TEST(TorchPickle, TruncatedOrFlippedPicklesNeverCrash) {
  const std::string pickle = fixture_pickle(kAssets / "hf_bin_fp16" / "pytorch_model.bin");
  for (size_t keep = 0; keep < pickle.size(); ++keep) {
    EXPECT_THROW(llt::parse_torch_pickle(pickle.substr(0, keep), "cut"), llt::InputError) << keep;
  }
  // Each byte replaced by a few values: either still a valid state dict or an InputError.
  for (size_t at = 0; at < pickle.size(); ++at) {
    for (const char value : {'\x00', '\xff', 'h', '('}) {
      std::string bad = pickle;
      bad[at] = value;
      try {
        llt::parse_torch_pickle(bad, "flipped");
      } catch (const llt::InputError&) {
      }
    }
  }
  const std::string error = input_error([] { llt::parse_torch_pickle("\x80\x02K\x01.", "src"); });
  EXPECT_TRUE(contains(error, "src")) << error;
  EXPECT_TRUE(contains(error, "expected a state dict")) << error;
  EXPECT_TRUE(
      contains(input_error([] { llt::parse_torch_pickle("\x80\x02h\x05.", "s"); }), "memo key 5"));
  EXPECT_TRUE(contains(input_error([] { llt::parse_torch_pickle("\x80\x02\xff", "s"); }),
                       "unsupported opcode 0xff"));
}

TEST(Weights, RealStories260kLoadsAsATiedLlama2cModel) {
  // Karpathy's stories260K.bin (see assets/models/stories260K/PROVENANCE.md).
  const fs::path path = fs::path(LLT_SOURCE_DIR) / "assets/models/stories260K/stories260K.bin";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is not in this checkout";
  EXPECT_EQ(llt::detect_format(path), WeightsFormat::kLlama2c);
  const auto loaded = load(path);
  const llt::ModelArgs& a = loaded.args;
  EXPECT_EQ(a.dim, 64);
  EXPECT_EQ(a.ffn_hidden(), 172);
  EXPECT_EQ(a.n_layers, 5);
  EXPECT_EQ(a.n_heads, 8);
  EXPECT_EQ(a.kv_heads(), 4);
  EXPECT_EQ(a.vocab_size, 512);
  EXPECT_EQ(a.max_seq_len, 512);
  EXPECT_TRUE(a.tie_embeddings);
  int64_t loaded_numel = 0;
  for (const auto& [name, tensor] : parameters(loaded)) loaded_numel += tensor.numel();
  // The file is the 28-byte header, every weight once (tied) and two (512, 4) freq_cis tables.
  const int64_t file_floats = (static_cast<int64_t>(fs::file_size(path)) - 28) / 4;
  EXPECT_EQ(loaded_numel, file_floats - 2 * 512 * 4);
}

TEST(TorchPickle, KeptFuzzInputListHoldingItselfIsRefusedAndFreed) {
  // fuzz/crashes/pth_pickle/: PROTO 2, EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP: a list that
  // holds itself. It leaked while values were shared_ptrs owning each other; the reader now owns
  // them. Without ASan the leak shows in glibc's count of bytes in use (mallinfo2): a leaked
  // value is over 100 bytes, so 1000 parses would leave over 100 KB behind.
  const fs::path path = kFuzzCrashes / "pth_pickle" / "leak-list-holding-itself.pkl";
  const std::string pickle = llt::read_file(path);
  ASSERT_EQ(pickle, (std::string{'\x80', '\x02', ']', 'q', '\x00', 'h', '\x00', 'a', '.'}));
  const std::string error = input_error([&] { llt::parse_torch_pickle(pickle, "self"); });
  EXPECT_TRUE(contains(error, "self")) << error;
  EXPECT_TRUE(contains(error, "expected a state dict")) << error;
  const auto parse = [&] {
    try {
      llt::parse_torch_pickle(pickle, "self");
    } catch (const llt::InputError&) {
    }
  };
  parse();  // anything allocated once, on first use, is allocated by now
  const auto before = static_cast<int64_t>(mallinfo2().uordblks);
  for (int i = 0; i < 1000; ++i) parse();
  const auto after = static_cast<int64_t>(mallinfo2().uordblks);
  EXPECT_LT(after - before, 1000 * 16) << "bytes still in use after 1000 parses";
}
