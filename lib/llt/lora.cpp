#include "llt/lora.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/init.h>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/json_fields.h"
#include "llt/safetensors.h"
#include "llt/weight_names.h"

namespace llt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kAdapterFormat = "llt-lora";
constexpr int kAdapterFormatVersion = 1;
constexpr const char* kAdapterWeights = "adapter.safetensors";
constexpr const char* kAdapterConfig = "adapter_config.json";
constexpr const char* kPeftWeights = "adapter_model.safetensors";
constexpr const char* kPeftPickleWeights = "adapter_model.bin";

// "wq" -> "attention.wq", "w1" -> "feed_forward.w1": the target's path inside a block.
std::string block_module_path(const std::string& name) {
  const bool attention = name == "wq" || name == "wk" || name == "wv" || name == "wo";
  return (attention ? "attention." : "feed_forward.") + name;
}

// Where target `name` of a block lives: the module that registered it and its typed member.
struct Slot {
  torch::nn::Module* owner;
  std::shared_ptr<LinearImpl>* member;
};

Slot target_slot(TransformerBlockImpl& block, const std::string& name) {
  AttentionImpl& a = *block.attention;
  FeedForwardImpl& f = *block.feed_forward;
  if (name == "wq") return {&a, &a.wq};
  if (name == "wk") return {&a, &a.wk};
  if (name == "wv") return {&a, &a.wv};
  if (name == "wo") return {&a, &a.wo};
  if (name == "w1") return {&f, &f.w1};
  if (name == "w2") return {&f, &f.w2};
  if (name == "w3") return {&f, &f.w3};
  throw RuntimeError("unknown LoRA target '" + name + "'");
}

// Every LoraLinear of the model with its module path ("layers.0.attention.wq"), in module order.
std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> lora_modules(
    TransformerImpl& model) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> found;
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(item.value())) {
      found.emplace_back(item.key(), lora);
    }
  }
  return found;
}

// A plain LinearImpl around an existing weight (LinearImpl's own constructor allocates one).
class SharedWeightLinearImpl : public LinearImpl {
 public:
  explicit SharedWeightLinearImpl(const torch::Tensor& w) : LinearImpl(0, 0, w.options()) {
    weight = w;
    parameters_["weight"] = w;  // replaces the registered (0, 0) placeholder
  }
};

// "layers.3.attention.wq" -> "model.layers.3.self_attn.q_proj", through the one name table
// (lib/llt/weight_names).
std::string hf_module_path(const std::string& meta_path) {
  const auto hf = meta_to_hf_name(meta_path + ".weight");
  const std::string suffix = ".weight";
  if (!hf || hf->size() <= suffix.size()) {
    throw RuntimeError("no Hugging Face name for module '" + meta_path + "'");
  }
  return hf->substr(0, hf->size() - suffix.size());
}

// The last component of a dotted path: "model.layers.3.self_attn.q_proj" -> "q_proj".
std::string last_component(const std::string& path) {
  return path.substr(path.rfind('.') + 1);
}

void write_json(const fs::path& path, const json& j) {
  write_file_atomic(path, j.dump(2) + "\n", /*overwrite=*/true);
}

// Field `key` of the adapter config, with a message naming the file on absence or wrong type.
template <typename T>
T config_field(const json& config, const std::string& key, const fs::path& file) {
  if (!config.contains(key)) throw InputError(file.string() + ": missing field '" + key + "'");
  // json_holds: get<int64_t>() would truncate 2.5 and overflow (undefined) on 1e300.
  if (!json_holds<T>(config.at(key))) {
    throw InputError(file.string() + ": field '" + key +
                     "' has the wrong type: " + config.at(key).dump().substr(0, 80));
  }
  return config.at(key).get<T>();
}

// The options of the LoRA already on `model` (rank, alpha, dropout of the first module; targets
// of block 0).
LoraOptions options_on_model(TransformerImpl& model) {
  LoraOptions options;
  options.targets.clear();
  const auto modules = lora_modules(model);
  for (const auto& [path, lora] : modules) {
    if (path.rfind("layers.0.", 0) == 0) options.targets.push_back(last_component(path));
  }
  options.rank = modules.front().second->rank;
  options.alpha = modules.front().second->alpha;
  options.dropout = modules.front().second->dropout;
  return options;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ",") + item;
  return out;
}

}  // namespace

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  return names;
}

void validate_lora_options(const LoraOptions& options, const std::string& source) {
  if (options.rank < 1) {
    throw InputError(source + ": lora-rank must be >= 1 for an adapter, got " +
                     std::to_string(options.rank));
  }
  if (!(options.alpha > 0)) {
    throw InputError(source + ": lora-alpha must be > 0, got " + std::to_string(options.alpha));
  }
  if (!(options.dropout >= 0 && options.dropout < 1)) {
    throw InputError(source + ": lora-dropout must be in [0, 1), got " +
                     std::to_string(options.dropout));
  }
  if (options.targets.empty()) throw InputError(source + ": lora-targets is empty");
  std::set<std::string> seen;
  const auto& known = lora_target_names();
  for (const auto& t : options.targets) {
    if (std::find(known.begin(), known.end(), t) == known.end()) {
      throw InputError(source + ": lora-targets has unknown module '" + t +
                       "' (known: " + join(known) + ")");
    }
    if (!seen.insert(t).second) {
      throw InputError(source + ": lora-targets names '" + t + "' twice");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LoraLinear

LoraLinearImpl::LoraLinearImpl(const LinearImpl& base, int64_t rank_, double alpha_,
                               double dropout_)
    : LinearImpl(0, 0, base.weight.options()),
      rank(rank_),
      alpha(alpha_),
      dropout(dropout_),
      scale(alpha_ / static_cast<double>(rank_)) {
  // Share the base weight: LinearImpl's constructor registered a (0, 0) placeholder.
  weight = base.weight;
  parameters_["weight"] = weight;
  weight.set_requires_grad(false);

  const int64_t out = weight.size(0), in = weight.size(1);
  const auto dtype = weight.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const auto options = torch::TensorOptions().dtype(dtype).device(weight.device());
  lora_a = register_parameter("lora_a", torch::empty({rank, in}, options));
  lora_b = register_parameter("lora_b", torch::zeros({out, rank}, options));
  torch::NoGradGuard no_grad;
  // gain sqrt(2 / (1 + 5)) times sqrt(3 / fan_in): bound 1 / sqrt(in), as nn.Linear's default.
  torch::nn::init::kaiming_uniform_(lora_a, /*a=*/std::sqrt(5.0));
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  return with_adapter(x, LinearImpl::forward(x));
}

torch::Tensor LoraLinearImpl::forward_for_gradients(const torch::Tensor& x) {
  return with_adapter(x, LinearImpl::forward_for_gradients(x));
}

torch::Tensor LoraLinearImpl::with_adapter(const torch::Tensor& x, const torch::Tensor& out) {
  auto h = x.scalar_type() == lora_a.scalar_type() ? x : x.to(lora_a.scalar_type());
  if (dropout > 0) h = at::dropout(h, dropout, is_training());
  // (..., in) -> (..., r) -> (..., out)
  auto update = at::linear(at::linear(h, lora_a), lora_b) * scale;
  if (update.scalar_type() != out.scalar_type()) update = update.to(out.scalar_type());
  return out + update;
}

namespace {

// scale * B A in fp32, (out, in).
torch::Tensor lora_delta(const torch::Tensor& a, const torch::Tensor& b, double scale) {
  return at::matmul(b.to(torch::kFloat), a.to(torch::kFloat)) * scale;
}

}  // namespace

torch::Tensor LoraLinearImpl::delta_weight() const {
  return lora_delta(lora_a, lora_b, scale);
}

torch::Tensor merged_lora_weight(const torch::Tensor& w, const torch::Tensor& a,
                                 const torch::Tensor& b, double scale) {
  TORCH_CHECK(w.dim() == 2 && a.dim() == 2 && b.dim() == 2 && b.size(0) == w.size(0) &&
                  a.size(1) == w.size(1) && a.size(0) == b.size(1),
              "merged_lora_weight: W ", w.sizes(), ", A ", a.sizes(), ", B ", b.sizes());
  return w.to(torch::kFloat) + lora_delta(a, b, scale).to(w.device());  // (out, in)
}

// ---------------------------------------------------------------------------------------------
// Applying, counting, merging

void apply_lora(TransformerImpl& model, const LoraOptions& options) {
  validate_lora_options(options, "LoRA options");
  if (has_lora(model)) throw RuntimeError("apply_lora: the model already has LoRA adapters");
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  for (size_t i = 0; i < model.layers->size(); ++i) {
    for (const auto& name : options.targets) {
      const Slot slot = target_slot(model.block(i), name);
      auto lora = std::make_shared<LoraLinearImpl>(**slot.member, options.rank, options.alpha,
                                                   options.dropout);
      *slot.member = slot.owner->replace_module(name, lora);
    }
  }
}

bool has_lora(TransformerImpl& model) {
  return !lora_modules(model).empty();
}

std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(TransformerImpl& model) {
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& [path, lora] : lora_modules(model)) {
    params.emplace_back(path + ".lora_a", lora->lora_a);
    params.emplace_back(path + ".lora_b", lora->lora_b);
  }
  return params;
}

int64_t count_lora_parameters(const ModelArgs& args, const LoraOptions& options) {
  validate_lora_options(options, "LoRA options");
  int64_t per_layer = 0;
  for (const auto& name : options.targets) {
    const auto [out, in] = block_linear_shape(args, name);
    per_layer += options.rank * (in + out);  // A (r, in) + B (out, r)
  }
  return args.n_layers * per_layer;
}

void merge_lora(TransformerImpl& model) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < model.layers->size(); ++i) {
    for (const auto& name : lora_target_names()) {
      const Slot slot = target_slot(model.block(i), name);
      const auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(*slot.member);
      if (!lora) continue;
      torch::Tensor w = lora->weight;
      w.copy_(merged_lora_weight(w, lora->lora_a, lora->lora_b, lora->scale));
      *slot.member = slot.owner->replace_module(name, std::make_shared<SharedWeightLinearImpl>(w));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Adapter files

void save_adapter(const fs::path& dir, TransformerImpl& model, const LoraOptions& options) {
  const auto params = lora_parameters(model);
  if (params.empty()) throw RuntimeError("save_adapter: the model has no LoRA adapters");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw RuntimeError(dir.string() + ": cannot create the adapter directory");
  NamedTensors tensors;
  for (const auto& [name, p] : params) tensors.emplace_back(name, p.detach().to(torch::kFloat));
  write_safetensors(dir / kAdapterWeights, tensors,
                    {{"format", kAdapterFormat}, {"format_version", "1"}});
  write_json(dir / kAdapterConfig, {{"format", kAdapterFormat},
                                    {"format_version", kAdapterFormatVersion},
                                    {"rank", options.rank},
                                    {"alpha", options.alpha},
                                    {"dropout", options.dropout},
                                    {"targets", options.targets},
                                    {"n_layers", model.args().n_layers},
                                    {"dim", model.args().dim}});
}

namespace {

// Tensor `name` of `file` in fp32, checked to have `shape`.
torch::Tensor take_tensor(TensorFile& file, const std::string& name,
                          const std::vector<int64_t>& shape) {
  const TensorInfo* info = file.find(name);
  if (info == nullptr) throw InputError(file.path().string() + ": missing tensor '" + name + "'");
  if (info->shape != shape) {
    throw InputError(file.path().string() + ": tensor '" + name + "' has shape " +
                     shape_string(info->shape) + ", the model expects " + shape_string(shape));
  }
  return file.read(name).to(torch::kFloat);
}

void refuse_unexpected(TensorFile& file, const std::set<std::string>& expected) {
  for (const auto& info : file.tensors()) {
    if (!expected.count(info.name)) {
      throw InputError(file.path().string() + ": unexpected tensor '" + info.name +
                       "' (not a LoRA parameter of this model)");
    }
  }
}

// The module paths ("layers.3.attention.wq") an adapter with `targets` has on `layers`, in
// module order: block by block, the targets in block order.
std::vector<std::string> adapted_modules(const std::vector<std::string>& targets,
                                         const std::set<int64_t>& layers) {
  std::vector<std::string> paths;
  for (const int64_t i : layers) {
    for (const auto& target : lora_target_names()) {
      if (std::find(targets.begin(), targets.end(), target) == targets.end()) continue;
      paths.push_back("layers." + std::to_string(i) + "." + block_module_path(target));
    }
  }
  return paths;
}

// A Hugging Face PEFT LoRA adapter for LLaMA (adapter_config.json + adapter_model.safetensors,
// as PEFT's save_pretrained and export_peft_adapter write it). Plain LoRA only: DoRA, rsLoRA,
// trained biases, modules_to_save and per-module ranks are refused by name. Modules of blocks
// outside layers_to_transform are not in the result.
LoraAdapter read_peft_adapter(const fs::path& dir, const json& config, const ModelArgs& args) {
  const fs::path config_path = dir / kAdapterConfig;
  const std::string where = config_path.string() + ": ";
  if (config.value("peft_type", std::string()) != "LORA") {
    throw InputError(where + "field 'peft_type' is " + config["peft_type"].dump() +
                     ", expected \"LORA\"");
  }
  auto is_set = [&](const char* key) {
    if (!config.contains(key)) return false;
    const json& v = config[key];
    return !(v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_array() && v.empty()) ||
             (v.is_object() && v.empty()) || (v.is_string() && v.get<std::string>() == "none"));
  };
  for (const auto& [key, what] : std::vector<std::pair<const char*, const char*>>{
           {"use_dora", "DoRA"},
           {"use_rslora", "rsLoRA"},
           {"bias", "trained biases"},
           {"modules_to_save", "modules_to_save"},
           {"rank_pattern", "per-module ranks"},
           {"alpha_pattern", "per-module alphas"},
           {"fan_in_fan_out", "fan_in_fan_out"},
           {"lora_bias", "LoRA biases"},
           {"layer_replication", "layer_replication"},
           // Later PEFT variants (0.21 writes them null or false when unused).
           {"exclude_modules", "exclude_modules"},
           {"target_parameters", "LoRA on parameters"},
           {"trainable_token_indices", "trainable token embeddings"},
           {"alora_invocation_tokens", "aLoRA"},
           {"arrow_config", "Arrow routing"},
           {"use_qalora", "QALoRA"},
           {"use_bdlora", "BD-LoRA"},
           {"kasa_config", "KaSA"},
           {"velora_config", "VeLoRA"},
           {"monteclora_config", "MonteCLoRA"}}) {
    if (is_set(key)) {
      throw InputError(where + "field '" + key + "' is " + config[key].dump() + ": " + what +
                       " is not supported by llt (plain LoRA only)");
    }
  }
  LoraAdapter adapter;
  LoraOptions& options = adapter.options;
  options.rank = config_field<int64_t>(config, "r", config_path);
  options.alpha = config_field<double>(config, "lora_alpha", config_path);
  options.dropout = config.contains("lora_dropout")
                        ? config_field<double>(config, "lora_dropout", config_path)
                        : 0.0;
  if (!config.contains("target_modules") || !config["target_modules"].is_array()) {
    throw InputError(where +
                     "field 'target_modules' must be a list of module names (q_proj, "
                     "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
  }
  options.targets.clear();  // LoraOptions' default targets are llt-finetune's (wq, wv)
  std::map<std::string, std::string> meta_of;  // "q_proj" -> "wq"
  for (const auto& t : lora_target_names()) {
    meta_of[last_component(hf_module_path("layers.0." + block_module_path(t)))] = t;
  }
  for (const auto& hf :
       config_field<std::vector<std::string>>(config, "target_modules", config_path)) {
    const auto it = meta_of.find(last_component(hf));
    if (it == meta_of.end()) {
      throw InputError(where + "field 'target_modules' names '" + hf +
                       "', not a LLaMA linear map (q_proj k_proj v_proj o_proj gate_proj "
                       "up_proj down_proj)");
    }
    options.targets.push_back(it->second);
  }
  // llt's order (wq wk wv wo w1 w2 w3), so the options compare equal to llt's own.
  std::vector<std::string> ordered;
  for (const auto& t : lora_target_names()) {
    if (std::count(options.targets.begin(), options.targets.end(), t)) ordered.push_back(t);
  }
  options.targets = ordered;
  validate_lora_options(options, config_path.string());
  // layers_to_transform: the blocks that carry the adapter (all when absent).
  std::set<int64_t> layers;
  if (is_set("layers_to_transform")) {
    const json& v = config["layers_to_transform"];
    const auto list = v.is_array() ? config_field<std::vector<int64_t>>(
                                         config, "layers_to_transform", config_path)
                                   : std::vector<int64_t>{config_field<int64_t>(
                                         config, "layers_to_transform", config_path)};
    for (const int64_t l : list) {
      if (l < 0 || l >= args.n_layers) {
        throw InputError(where + "field 'layers_to_transform' holds layer " + std::to_string(l) +
                         " but the model has " + std::to_string(args.n_layers) + " layers");
      }
      layers.insert(l);
    }
  } else {
    for (int64_t l = 0; l < args.n_layers; ++l) layers.insert(l);
  }

  // PEFT writes safetensors; older PEFT (safe_serialization=False) a torch.save archive.
  fs::path weights = dir / kPeftWeights;
  std::error_code ec;
  if (!fs::exists(weights, ec) && fs::exists(dir / kPeftPickleWeights, ec)) {
    weights = dir / kPeftPickleWeights;
  }
  const auto file_owner = open_tensor_file(weights);
  TensorFile& file = *file_owner;
  std::set<std::string> expected;
  for (const auto& path : adapted_modules(options.targets, layers)) {
    const std::string hf = "base_model.model." + hf_module_path(path);
    const std::string leaf = last_component(path);
    const auto [out, in] = block_linear_shape(args, leaf);
    expected.insert(hf + ".lora_A.weight");
    expected.insert(hf + ".lora_B.weight");
    torch::Tensor a = take_tensor(file, hf + ".lora_A.weight", {options.rank, in});
    torch::Tensor b = take_tensor(file, hf + ".lora_B.weight", {out, options.rank});
    const int64_t heads = leaf == "wq" ? args.n_heads : leaf == "wk" ? args.kv_heads() : 0;
    if (heads > 0) b = unpermute_hf_rows(b, heads);  // HF's rotary row order -> Meta's
    adapter.modules.emplace_back(path, std::make_pair(a, b.contiguous()));
  }
  refuse_unexpected(file, expected);
  return adapter;
}

}  // namespace

LoraAdapter read_adapter(const fs::path& dir, const ModelArgs& args) {
  const fs::path config_path = dir / kAdapterConfig;
  json config;
  try {
    config = json::parse(read_file(config_path));
  } catch (const json::exception& e) {
    throw InputError(config_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!config.is_object()) throw InputError(config_path.string() + ": expected a JSON object");
  if (config.contains("peft_type")) return read_peft_adapter(dir, config, args);
  const auto format = config_field<std::string>(config, "format", config_path);
  const auto version = config_field<int>(config, "format_version", config_path);
  if (format != kAdapterFormat || version != kAdapterFormatVersion) {
    throw InputError(config_path.string() + ": format '" + format + "' version " +
                     std::to_string(version) + ", expected '" + kAdapterFormat + "' version " +
                     std::to_string(kAdapterFormatVersion) +
                     " (or a Hugging Face PEFT adapter, with 'peft_type')");
  }
  LoraAdapter adapter;
  LoraOptions& options = adapter.options;
  options.rank = config_field<int64_t>(config, "rank", config_path);
  options.alpha = config_field<double>(config, "alpha", config_path);
  options.dropout = config_field<double>(config, "dropout", config_path);
  options.targets = config_field<std::vector<std::string>>(config, "targets", config_path);
  validate_lora_options(options, config_path.string());
  for (const auto& [key, actual] :
       {std::pair<std::string, int64_t>{"n_layers", args.n_layers}, {"dim", args.dim}}) {
    const auto expected = config_field<int64_t>(config, key, config_path);
    if (expected != actual) {
      throw InputError(config_path.string() + ": field '" + key + "' is " +
                       std::to_string(expected) + " but the model has " + std::to_string(actual));
    }
  }

  SafetensorsFile file(dir / kAdapterWeights);
  std::set<std::string> expected;
  std::set<int64_t> layers;
  for (int64_t l = 0; l < args.n_layers; ++l) layers.insert(l);
  for (const auto& path : adapted_modules(options.targets, layers)) {
    const auto [out, in] = block_linear_shape(args, last_component(path));
    expected.insert(path + ".lora_a");
    expected.insert(path + ".lora_b");
    torch::Tensor a = take_tensor(file, path + ".lora_a", {options.rank, in});
    torch::Tensor b = take_tensor(file, path + ".lora_b", {out, options.rank});
    adapter.modules.emplace_back(path, std::make_pair(a, b));
  }
  refuse_unexpected(file, expected);
  return adapter;
}

LoraOptions load_adapter(const fs::path& dir, TransformerImpl& model) {
  const LoraAdapter adapter = read_adapter(dir, model.args());
  const LoraOptions& options = adapter.options;
  if (!has_lora(model)) {
    apply_lora(model, options);
  } else {
    const LoraOptions on = options_on_model(model);
    if (on.rank != options.rank || on.alpha != options.alpha || on.targets != options.targets) {
      throw InputError((dir / kAdapterConfig).string() + ": adapter has rank " +
                       std::to_string(options.rank) + ", targets " + join(options.targets) +
                       "; the model's LoRA has rank " + std::to_string(on.rank) + ", targets " +
                       join(on.targets));
    }
  }
  std::map<std::string, const std::pair<torch::Tensor, torch::Tensor>*> by_path;
  for (const auto& [path, ab] : adapter.modules) by_path[path] = &ab;
  torch::NoGradGuard no_grad;
  for (const auto& [path, lora] : lora_modules(model)) {
    const auto it = by_path.find(path);
    if (it == by_path.end()) {  // a block the adapter leaves alone: B = 0 adds exactly nothing
      lora->lora_b.zero_();
      continue;
    }
    lora->lora_a.copy_(it->second->first);
    lora->lora_b.copy_(it->second->second);
  }
  return options;
}

void export_peft_adapter(const fs::path& dir, TransformerImpl& model, const LoraOptions& options,
                         const std::string& base_model_name_or_path, int64_t base_n_layers) {
  const auto modules = lora_modules(model);
  if (modules.empty()) throw RuntimeError("export_peft_adapter: the model has no LoRA adapters");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw RuntimeError(dir.string() + ": cannot create the adapter directory");

  NamedTensors tensors;
  for (const auto& [path, lora] : modules) {
    const std::string hf = "base_model.model." + hf_module_path(path);
    const std::string leaf = last_component(path);
    torch::Tensor b = lora->lora_b.detach().to(torch::kFloat);  // (out, r)
    // HF's q/k rows are in rotate-half order per head; B's rows are W's rows.
    if (leaf == "wq") b = permute_hf_rows(b, model.args().n_heads);
    if (leaf == "wk") b = permute_hf_rows(b, model.args().kv_heads());
    tensors.emplace_back(hf + ".lora_A.weight", lora->lora_a.detach().to(torch::kFloat));
    tensors.emplace_back(hf + ".lora_B.weight", b.contiguous());
  }
  write_safetensors(dir / kPeftWeights, tensors, {{"format", "pt"}});

  std::vector<std::string> target_modules;  // "q_proj", "v_proj", ...
  for (const auto& t : options.targets) {
    target_modules.push_back(last_component(hf_module_path("layers.0." + block_module_path(t))));
  }
  const double alpha = options.alpha;
  const bool whole = alpha == std::floor(alpha) && std::abs(alpha) < 1e15;
  json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"r", options.rank},
                 {"lora_alpha", whole ? json(static_cast<int64_t>(alpha)) : json(alpha)},
                 {"lora_dropout", options.dropout},
                 {"target_modules", target_modules},
                 {"base_model_name_or_path",
                  base_model_name_or_path.empty() ? json() : json(base_model_name_or_path)},
                 {"bias", "none"},
                 {"fan_in_fan_out", false},
                 {"inference_mode", true},
                 {"init_lora_weights", true},
                 {"modules_to_save", nullptr}};
  const int64_t kept = model.args().n_layers;
  if (base_n_layers > kept) {  // a --n-layers model: the adapter is on the first `kept` blocks
    std::vector<int64_t> layers(static_cast<size_t>(kept));
    for (int64_t l = 0; l < kept; ++l) layers[static_cast<size_t>(l)] = l;
    config["layers_to_transform"] = layers;
  }
  write_json(dir / kAdapterConfig, config);
}

}  // namespace llt
