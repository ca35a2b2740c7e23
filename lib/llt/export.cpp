#include "llt/export.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/model.h"
#include "llt/pth_writer.h"
#include "llt/runtime.h"
#include "llt/safetensors.h"
#include "llt/tokenizer.h"
#include "llt/weight_names.h"
#include "llt/weights.h"

namespace llt {
namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// The model to export

struct ExportWeights::Impl {
  WeightsReader base;
  // Merged adapters by the Meta name of the weight they adapt ("layers.3.attention.wq.weight").
  struct Lora {
    at::Tensor a, b;  // (r, in), (out, r), fp32
    double scale;     // alpha / r
  };
  std::map<std::string, Lora> lora;
  std::unique_ptr<SafetensorsFile> trained;  // a full fine-tuning step's tensors
  c10::ScalarType trained_dtype = c10::kFloat;
};

ExportWeights::ExportWeights(const fs::path& model, int64_t n_layers)
    : impl_(new Impl{WeightsReader(model, n_layers), {}, nullptr, c10::kFloat}) {}

ExportWeights::~ExportWeights() = default;

void ExportWeights::merge_adapter(const fs::path& dir) {
  const LoraAdapter adapter = read_adapter(dir, args());
  const double scale = adapter.options.alpha / static_cast<double>(adapter.options.rank);
  for (const auto& [path, ab] : adapter.modules) {
    impl_->lora[path + ".weight"] = Impl::Lora{ab.first, ab.second, scale};
  }
}

void ExportWeights::use_trained(const fs::path& trainable) {
  auto file = std::make_unique<SafetensorsFile>(trainable);
  const std::string where = trainable.string();
  std::set<std::string> expected;
  const TensorInfo* first = nullptr;
  for (const auto& [name, shape] : parameter_shapes(args())) {
    expected.insert(name);
    const TensorInfo* info = file->find(name);
    if (info == nullptr) {
      const bool lora = !file->tensors().empty() &&
                        file->tensors().front().name.find(".lora_") != std::string::npos;
      throw InputError(where + ": missing tensor '" + name + "' of shape " + shape_string(shape) +
                       (lora ? " (a LoRA run's training state holds only the adapter: export "
                               "the run's adapter/ with --model BASE --adapter RUN/adapter)"
                             : ""));
    }
    if (info->shape != shape) {
      throw InputError(where + ": tensor '" + name + "' has shape " + shape_string(info->shape) +
                       ", the model (" + std::to_string(args().n_layers) + " layers) expects " +
                       shape_string(shape));
    }
    if (first == nullptr) first = info;
    if (info->dtype != first->dtype) {
      throw InputError(where + ": tensors are stored in different dtypes ('" + first->name + "' " +
                       dtype_name(first->dtype) + ", '" + name + "' " + dtype_name(info->dtype) +
                       ")");
    }
  }
  for (const auto& info : file->tensors()) {
    if (!expected.count(info.name)) {
      throw InputError(where + ": unexpected tensor '" + info.name + "' of shape " +
                       shape_string(info.shape) + " (no such parameter in a " +
                       std::to_string(args().n_layers) + "-layer model of the base's shape)");
    }
  }
  impl_->trained_dtype = first->dtype;
  impl_->trained = std::move(file);
}

const ModelArgs& ExportWeights::args() const {
  return impl_->base.args();
}

c10::ScalarType ExportWeights::stored_dtype() const {
  return impl_->trained ? impl_->trained_dtype : impl_->base.stored_dtype();
}

at::Tensor ExportWeights::read(const std::string& name) {
  if (impl_->trained) return impl_->trained->read(name);
  at::Tensor t = impl_->base.read(name);
  const auto it = impl_->lora.find(name);
  if (it == impl_->lora.end()) return t;
  return merged_lora_weight(t, it->second.a, it->second.b, it->second.scale);
}

// ---------------------------------------------------------------------------------------------
// Sizes and shards

std::optional<int64_t> parse_byte_size(const std::string& text) {
  static const std::vector<std::pair<std::string, double>> kUnits = {{"", 1},
                                                                     {"b", 1},
                                                                     {"kb", 1e3},
                                                                     {"mb", 1e6},
                                                                     {"gb", 1e9},
                                                                     {"tb", 1e12},
                                                                     {"kib", 1024.0},
                                                                     {"mib", 1048576.0},
                                                                     {"gib", 1073741824.0},
                                                                     {"tib", 1099511627776.0}};
  // Digits and one '.', then the unit: no sign, exponent, hex, inf or nan.
  const size_t end = text.find_first_not_of("0123456789.");
  const std::string number = text.substr(0, end);
  if (number.empty() || number == "." || std::count(number.begin(), number.end(), '.') > 1) {
    return std::nullopt;
  }
  std::string unit = text.substr(number.size());
  if (!unit.empty() && unit[0] == ' ') unit.erase(0, 1);  // "1.5 MiB"
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const auto& [name, factor] : kUnits) {
    if (unit != name) continue;
    const double bytes = std::stod(number) * factor;
    if (!(bytes >= 1) || bytes > 9e18) return std::nullopt;
    return static_cast<int64_t>(bytes);
  }
  return std::nullopt;
}

std::vector<std::vector<size_t>> plan_shards(const std::vector<int64_t>& bytes, int64_t max_bytes) {
  std::vector<std::vector<size_t>> shards;
  int64_t current = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (shards.empty() || (current > 0 && current + bytes[i] > max_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += bytes[i];
  }
  return shards;
}

int64_t export_tensor_bytes(const ModelArgs& args, c10::ScalarType dtype) {
  return args.num_parameters() * static_cast<int64_t>(c10::elementSize(dtype));
}

// ---------------------------------------------------------------------------------------------
// Shared by both formats

namespace {

// "bfloat16", as torch and transformers name the dtype.
std::string torch_dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat:
      return "float32";
    case c10::kBFloat16:
      return "bfloat16";
    case c10::kHalf:
      return "float16";
    default:
      throw InputError("cannot export tensors of dtype " + std::string(c10::toString(dtype)) +
                       " (fp32, bf16 or fp16)");
  }
}

void write_json_file(const fs::path& path, const json& j) {
  write_file_atomic(path, j.dump(2) + "\n", /*overwrite=*/false);
}

// The tokenizer's model file, copied byte for byte as tokenizer.model.
void copy_tokenizer(const Tokenizer& tokenizer, const fs::path& dir) {
  write_file_atomic(dir / "tokenizer.model", read_file(tokenizer.path()), /*overwrite=*/false);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face

// config.json of transformers' LlamaConfig for `args` (llt's HF reader reads the same keys).
json hf_config(const ModelArgs& a, c10::ScalarType dtype, const Tokenizer& tokenizer) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", a.dim},
          {"intermediate_size", a.ffn_hidden()},
          {"num_attention_heads", a.n_heads},
          {"num_key_value_heads", a.kv_heads()},
          {"num_hidden_layers", a.n_layers},
          {"head_dim", a.head_dim()},
          {"hidden_act", "silu"},
          {"rms_norm_eps", a.norm_eps},
          {"rope_theta", a.rope_theta},
          {"max_position_embeddings", a.max_seq_len},
          {"vocab_size", a.vocab_size},
          {"tie_word_embeddings", a.tie_embeddings},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"bos_token_id", tokenizer.bos_id()},
          {"eos_token_id", tokenizer.eos_id()},
          {"initializer_range", 0.02},
          {"use_cache", true},
          {"torch_dtype", torch_dtype_name(dtype)}};
}

// An AddedToken as transformers writes the special tokens of Meta's LLaMA-2 folders.
json added_token(const Tokenizer& tokenizer, int32_t id, bool typed) {
  json token = {{"content", tokenizer.piece(id)},
                {"lstrip", false},
                {"normalized", false},
                {"rstrip", false},
                {"single_word", false}};
  if (typed) token["__type"] = "AddedToken";
  return token;
}

// tokenizer_config.json and special_tokens_map.json as Meta's Llama-2-7b-hf has them (the slow
// LlamaTokenizer over tokenizer.model: BOS added, EOS not, no pad token).
void write_hf_tokenizer(const Tokenizer& tokenizer, const ModelArgs& args, const fs::path& dir) {
  copy_tokenizer(tokenizer, dir);
  json config = {{"tokenizer_class", "LlamaTokenizer"},
                 {"add_bos_token", true},
                 {"add_eos_token", false},
                 {"clean_up_tokenization_spaces", false},
                 {"legacy", false},
                 {"model_max_length", args.max_seq_len},
                 {"pad_token", nullptr},
                 {"sp_model_kwargs", json::object()}};
  json special = json::object();
  for (const auto& [key, id] : {std::pair<const char*, int32_t>{"bos_token", tokenizer.bos_id()},
                                {"eos_token", tokenizer.eos_id()},
                                {"unk_token", tokenizer.unk_id()}}) {
    if (id < 0) continue;
    config[key] = added_token(tokenizer, id, /*typed=*/true);
    special[key] = added_token(tokenizer, id, /*typed=*/false);
  }
  write_json_file(dir / "tokenizer_config.json", config);
  write_json_file(dir / "special_tokens_map.json", special);
}

// One tensor as transformers stores it: HF name, q/k rows in rotate-half order, `dtype`.
struct HfTensor {
  std::string meta;  // the parameter's Meta name
  std::string hf;
  int64_t permuted_heads;  // > 0: wq (n_heads) or wk (n_kv_heads)
  TensorInfo info;         // HF name, dtype, shape
};

std::vector<HfTensor> hf_tensors(const ModelArgs& args, c10::ScalarType dtype) {
  std::vector<HfTensor> out;
  for (const auto& [name, shape] : parameter_shapes(args)) {
    const auto hf = meta_to_hf_name(name);
    if (!hf) throw RuntimeError("internal: no Hugging Face name for parameter '" + name + "'");
    int64_t heads = 0;
    if (const auto layer = split_layer_name(name, "layers.")) {
      if (layer->second == "attention.wq.weight") heads = args.n_heads;
      if (layer->second == "attention.wk.weight") heads = args.kv_heads();
    }
    out.push_back({name, *hf, heads, TensorInfo{*hf, dtype, shape}});
  }
  return out;
}

// "model-00002-of-00003.safetensors", or "model.safetensors" for a single file.
std::string shard_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

void write_hf_weights(ExportWeights& weights, const fs::path& dir, const ExportOptions& o) {
  const std::vector<HfTensor> tensors = hf_tensors(weights.args(), o.dtype);
  std::vector<int64_t> bytes;
  for (const auto& t : tensors) {
    bytes.push_back(c10::multiply_integers(t.info.shape) *
                    static_cast<int64_t>(c10::elementSize(o.dtype)));
  }
  const auto shards = plan_shards(bytes, o.max_shard_size);
  json weight_map = json::object();
  int64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shard_name(s, shards.size());
    std::vector<TensorInfo> infos;
    for (size_t i : shards[s]) infos.push_back(tensors[i].info);
    SafetensorsWriter writer(dir / file, infos, {{"format", "pt"}});
    for (size_t i : shards[s]) {
      const HfTensor& t = tensors[i];
      at::Tensor value = weights.read(t.meta);  // (out, in) in Meta's row order
      if (t.permuted_heads > 0) value = permute_hf_rows(value, t.permuted_heads);
      writer.write(t.hf, value.to(o.dtype).contiguous());
      weight_map[t.hf] = file;
      total += bytes[i];
    }
    writer.finish();
  }
  if (shards.size() > 1) {
    write_json_file(dir / "model.safetensors.index.json",
                    {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  }
}

void write_hf_folder(ExportWeights& weights, const Tokenizer& tokenizer, const fs::path& dir,
                     const ExportOptions& o) {
  const ModelArgs& args = weights.args();
  write_hf_weights(weights, dir, o);
  write_json_file(dir / "config.json", hf_config(args, o.dtype, tokenizer));
  json generation = {{"bos_token_id", tokenizer.bos_id()}, {"eos_token_id", tokenizer.eos_id()}};
  write_json_file(dir / "generation_config.json", generation);
  write_hf_tokenizer(tokenizer, args, dir);
}

// ---------------------------------------------------------------------------------------------
// Meta

// Meta's params.json for `args`. Meta's llama/model.py has no FFN size field: it derives F from
// dim, multiple_of and ffn_dim_multiplier (ModelArgs::ffn_hidden), so an explicit F (llama2.c,
// HF) is said as multiple_of = F, which that rule rounds int(8 dim / 3) up to when F is larger.
// No max_seq_len (Meta's Llama.build passes its own, and llt then assumes 4096), no rope_theta
// unless it is not Llama 2's 10000. Throws InputError when F cannot be said.
json meta_params(const ModelArgs& a) {
  json params = {{"dim", a.dim},
                 {"n_layers", a.n_layers},
                 {"n_heads", a.n_heads},
                 {"n_kv_heads", a.kv_heads()},
                 {"vocab_size", a.vocab_size},
                 {"norm_eps", a.norm_eps}};
  if (a.rope_theta != 10000.0) params["rope_theta"] = a.rope_theta;  // Llama 2's has no field
  ModelArgs by_rule = a;
  by_rule.hidden_dim = 0;
  if (a.hidden_dim == 0 || by_rule.ffn_hidden() == a.hidden_dim) {
    params["multiple_of"] = a.multiple_of;
    if (a.ffn_dim_multiplier > 0) params["ffn_dim_multiplier"] = a.ffn_dim_multiplier;
    return params;
  }
  by_rule.multiple_of = a.hidden_dim;
  by_rule.ffn_dim_multiplier = 0;
  if (by_rule.ffn_hidden() != a.hidden_dim) {
    throw InputError("--format meta: the FFN size " + std::to_string(a.hidden_dim) +
                     " is below Meta's int(8 * dim / 3) = " + std::to_string(8 * a.dim / 3) +
                     " and cannot be said in params.json (multiple_of); use --format hf");
  }
  params["multiple_of"] = a.hidden_dim;
  return params;
}

// params.json, consolidated.00.pth (one model-parallel shard, Meta's names and layout; a tied
// classifier written out as output.weight, which Meta's format always has), tokenizer.model.
void write_meta_folder(ExportWeights& weights, const Tokenizer& tokenizer, const fs::path& dir,
                       const ExportOptions& o) {
  const ModelArgs& args = weights.args();
  const json params = meta_params(args);
  std::vector<TensorInfo> infos;
  for (const auto& [name, shape] : parameter_shapes(args)) infos.push_back({name, o.dtype, shape});
  if (args.tie_embeddings) {
    infos.push_back({"output.weight", o.dtype, {args.vocab_size, args.dim}});
  }
  PthWriter writer(dir / "consolidated.00.pth", infos);
  at::Tensor embeddings;
  for (const auto& [name, shape] : parameter_shapes(args)) {
    const at::Tensor value = weights.read(name).to(o.dtype).contiguous();
    writer.write(name, value);
    if (args.tie_embeddings && name == "tok_embeddings.weight") embeddings = value;
  }
  if (args.tie_embeddings) writer.write("output.weight", embeddings);
  writer.finish();
  write_json_file(dir / "params.json", params);
  copy_tokenizer(tokenizer, dir);
}

}  // namespace

void write_export(ExportWeights& weights, const Tokenizer& tokenizer, const fs::path& dir,
                  const ExportOptions& options) {
  torch_dtype_name(options.dtype);  // refuses other dtypes before any file
  if (tokenizer.vocab_size() > weights.args().vocab_size) {
    throw InputError(tokenizer.path().string() + ": tokenizer has " +
                     std::to_string(tokenizer.vocab_size()) + " pieces but the model has " +
                     "vocab_size " + std::to_string(weights.args().vocab_size) +
                     "; wrong --tokenizer?");
  }
  switch (options.format) {
    case ExportFormat::kHuggingFace:
      write_hf_folder(weights, tokenizer, dir, options);
      return;
    case ExportFormat::kMeta:
      write_meta_folder(weights, tokenizer, dir, options);
      return;
  }
}

}  // namespace llt
