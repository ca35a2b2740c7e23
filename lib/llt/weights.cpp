#include "llt/weights.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/json_fields.h"
#include "llt/runtime.h"
#include "llt/tensor_file.h"
#include "llt/weight_names.h"

namespace llt {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Configuration files

json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw InputError(path.string() + ": not valid JSON: " + e.what());
  }
}

// Typed access to a config object, with messages naming the file and the key.
class Config {
 public:
  Config(json j, std::string source) : j_(std::move(j)), source_(std::move(source)) {
    if (!j_.is_object()) throw InputError(source_ + ": expected a JSON object");
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }
  int64_t integer(const std::string& key) const {
    if (!has(key)) throw InputError(source_ + ": missing field '" + key + "'");
    if (!json_holds<int64_t>(j_[key])) fail(key, "an integer");
    return j_[key].get<int64_t>();
  }
  int64_t integer_or(const std::string& key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  double number_or(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) fail(key, "a number");
    return j_[key].get<double>();
  }
  bool boolean_or(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) fail(key, "true or false");
    return j_[key].get<bool>();
  }
  std::string string_or(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) fail(key, "a string");
    return j_[key].get<std::string>();
  }
  [[noreturn]] void unsupported(const std::string& key, const std::string& why) const {
    throw InputError(source_ + ": field '" + key + "' = " + j_[key].dump() + " is not supported (" +
                     why + ")");
  }

 private:
  [[noreturn]] void fail(const std::string& key, const std::string& expected) const {
    throw InputError(source_ + ": field '" + key + "' must be " + expected + ", got " +
                     j_[key].dump());
  }
  json j_;
  std::string source_;
};

// ---------------------------------------------------------------------------------------------
// What a format reader hands the loader: the stored configuration and, per Meta parameter name,
// where the tensor is and how to copy it into a parameter (reading its bytes only then).

struct Source {
  std::string file;  // for messages
  std::string key;   // the tensor's name in that file
  std::vector<int64_t> shape;
  c10::ScalarType dtype;  // as stored
  std::function<void(at::Tensor& dst)> copy_into;
};

struct OpenWeights {
  ModelArgs args;                                         // as stored: all layers
  std::string source;                                     // the weights path, for messages
  std::map<std::string, Source> tensors;                  // by Meta parameter name
  std::function<std::string(const std::string&)> key_of;  // Meta name -> name in the files

  void add(const std::string& meta_name, Source tensor) {
    const std::string file = tensor.file;
    const std::string key = tensor.key;
    if (!tensors.emplace(meta_name, std::move(tensor)).second) {
      throw InputError(file + ": tensor '" + key + "' duplicates parameter '" + meta_name + "'");
    }
  }
};

// Every expected tensor present with its shape, nothing unexpected. Tensors of layers past
// kept.n_layers are allowed (and never read) if layer 0 has the same kind.
void check_tensors(const OpenWeights& stored, const ModelArgs& kept) {
  std::set<std::string> expected;
  for (const auto& [name, shape] : parameter_shapes(kept)) {
    expected.insert(name);
    const auto it = stored.tensors.find(name);
    if (it == stored.tensors.end()) {
      throw InputError(stored.source + ": missing tensor '" + stored.key_of(name) +
                       "' for parameter '" + name + "' of shape " + shape_string(shape));
    }
    if (it->second.shape != shape) {
      throw InputError(it->second.file + ": tensor '" + it->second.key + "' has shape " +
                       shape_string(it->second.shape) + ", expected " + shape_string(shape) +
                       " for parameter '" + name + "'");
    }
  }
  for (const auto& [name, tensor] : stored.tensors) {
    if (expected.count(name)) continue;
    const auto layer = split_layer_name(name, "layers.");
    if (layer && layer->first >= kept.n_layers && layer->first < stored.args.n_layers &&
        expected.count("layers.0." + layer->second)) {
      continue;  // a layer we skip
    }
    throw InputError(tensor.file + ": unexpected tensor '" + tensor.key + "' of shape " +
                     shape_string(tensor.shape) + " (no such parameter in the model)");
  }
}

// ---------------------------------------------------------------------------------------------
// Meta: params.json + consolidated.NN.pth

ModelArgs parse_params_json(const fs::path& path) {
  const Config c(read_json(path), path.string());
  ModelArgs args;
  args.dim = c.integer("dim");
  args.n_layers = c.integer("n_layers");
  args.n_heads = c.integer("n_heads");
  args.n_kv_heads = c.integer_or("n_kv_heads", 0);   // absent: = n_heads
  args.vocab_size = c.integer_or("vocab_size", -1);  // -1: from tok_embeddings
  args.multiple_of = c.integer_or("multiple_of", args.multiple_of);
  args.ffn_dim_multiplier = c.number_or("ffn_dim_multiplier", 0.0);
  args.norm_eps = c.number_or("norm_eps", args.norm_eps);
  args.rope_theta = c.number_or("rope_theta", args.rope_theta);
  args.max_seq_len = c.integer_or("max_seq_len", args.max_seq_len);
  if (c.boolean_or("use_scaled_rope", false)) {
    c.unsupported("use_scaled_rope", "Llama 3.1 RoPE scaling");
  }
  return args;
}

// consolidated.00.pth, consolidated.01.pth, ...: all of them, numbered from 0 without gaps.
std::vector<fs::path> meta_shards(const fs::path& dir) {
  static const std::regex kShard(R"(consolidated\.(\d{2,4})\.pth)");
  std::map<int, fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, kShard)) found[std::stoi(m[1].str())] = entry.path();
  }
  if (found.empty()) throw InputError(dir.string() + ": no consolidated.NN.pth beside params.json");
  std::vector<fs::path> shards;
  for (const auto& [index, path] : found) {
    if (index != static_cast<int>(shards.size())) {
      throw InputError(dir.string() + ": Meta shards are not numbered 00.." +
                       std::to_string(found.size() - 1) + " (found " + path.filename().string() +
                       ")");
    }
    shards.push_back(path);
  }
  return shards;
}

ModelArgs read_meta_args(const fs::path& dir) {
  ModelArgs args = parse_params_json(dir / "params.json");
  if (args.vocab_size <= 0) {  // Meta's real params.json says -1
    const auto shard = open_tensor_file(meta_shards(dir).front());
    const TensorInfo* embeddings = shard->find("tok_embeddings.weight");
    if (embeddings == nullptr || embeddings->shape.size() != 2) {
      throw InputError(shard->path().string() + ": params.json has vocab_size " +
                       std::to_string(args.vocab_size) +
                       " but the shard has no 2-d tok_embeddings.weight to take it from");
    }
    args.vocab_size = embeddings->shape[0];  // split on dim 1: every shard has all rows
  }
  return args;
}

using Shards = std::vector<std::shared_ptr<TensorFile>>;

// Tensor `info` of shard 0 joined across all shards along its kind's model-parallel dim (Meta's
// layout; replicated kinds are read from shard 0 only).
Source meta_source(const Shards& shards, const TensorInfo& info) {
  const TensorFile& first = *shards.front();
  int dim = shards.size() == 1 ? -1 : meta_shard_dim(info.name);
  if (dim >= static_cast<int>(info.shape.size())) dim = -1;  // mis-shaped: check_tensors says so
  std::vector<int64_t> shape = info.shape;
  for (size_t i = 1; i < shards.size(); ++i) {
    const TensorInfo* part = shards[i]->find(info.name);
    if (part == nullptr) {
      throw InputError(shards[i]->path().string() + ": missing tensor '" + info.name +
                       "' (present in " + first.path().string() + ")");
    }
    bool fits = part->shape.size() == info.shape.size();
    for (size_t d = 0; fits && d < info.shape.size(); ++d) {
      fits = static_cast<int>(d) == dim || part->shape[d] == info.shape[d];
    }
    if (!fits) {
      throw InputError(shards[i]->path().string() + ": tensor '" + info.name + "' has shape " +
                       shape_string(part->shape) + ", which does not match shard 0's " +
                       shape_string(info.shape) +
                       (dim >= 0 ? " split on dim " + std::to_string(dim) : " (replicated)"));
    }
    if (dim >= 0) shape[dim] += part->shape[dim];
  }
  std::string file = first.path().string();
  if (shards.size() > 1) {
    file += " (+" + std::to_string(shards.size() - 1) + " more shard" +
            (shards.size() > 2 ? "s)" : ")");
  }
  Source source{file, info.name, shape, info.dtype, nullptr};
  source.copy_into = [shards, dim, name = info.name](at::Tensor& dst) {
    int64_t offset = 0;
    for (const auto& shard : shards) {
      const at::Tensor part = shard->read(name);
      if (dim < 0) {
        dst.copy_(part);
        return;
      }
      dst.narrow(dim, offset, part.size(dim)).copy_(part);
      offset += part.size(dim);
    }
  };
  return source;
}

OpenWeights open_meta(const fs::path& dir) {
  OpenWeights stored{read_meta_args(dir), dir.string(), {}, [](const std::string& n) { return n; }};
  Shards shards;
  for (const auto& path : meta_shards(dir)) shards.push_back(open_tensor_file(path));
  const TensorFile& first = *shards.front();
  for (const auto& shard : shards) {  // no shard has a tensor shard 0 lacks (nor the reverse)
    for (const auto& info : shard->tensors()) {
      if (first.find(info.name) == nullptr) {
        throw InputError(shard->path().string() + ": tensor '" + info.name + "' is not in " +
                         first.path().string());
      }
    }
  }
  for (const auto& info : first.tensors()) {
    if (!is_known_non_weight(info.name)) stored.add(info.name, meta_source(shards, info));
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------
// Hugging Face: config.json + safetensors (or pytorch_model.bin), HF names, permuted q/k

ModelArgs read_hf_args(const fs::path& dir) {
  const Config c(read_json(dir / "config.json"), (dir / "config.json").string());
  if (c.string_or("model_type", "llama") != "llama") {
    c.unsupported("model_type", "llt reads LLaMA models");
  }
  if (c.string_or("hidden_act", "silu") != "silu") c.unsupported("hidden_act", "SwiGLU needs silu");
  if (c.has("rope_scaling")) c.unsupported("rope_scaling", "llt implements plain RoPE");
  if (c.boolean_or("attention_bias", false)) c.unsupported("attention_bias", "LLaMA has none");
  if (c.boolean_or("mlp_bias", false)) c.unsupported("mlp_bias", "LLaMA has none");
  ModelArgs args;
  args.dim = c.integer("hidden_size");
  args.n_layers = c.integer("num_hidden_layers");
  args.n_heads = c.integer("num_attention_heads");
  args.n_kv_heads = c.integer_or("num_key_value_heads", 0);
  args.vocab_size = c.integer("vocab_size");
  args.hidden_dim = c.integer("intermediate_size");
  args.norm_eps = c.number_or("rms_norm_eps", 1e-6);  // transformers' LlamaConfig default
  args.rope_theta = c.number_or("rope_theta", 10000.0);
  args.max_seq_len = c.integer_or("max_position_embeddings", 2048);
  args.tie_embeddings = c.boolean_or("tie_word_embeddings", false);
  if (c.has("head_dim") && args.n_heads > 0 && c.integer("head_dim") != args.dim / args.n_heads) {
    c.unsupported("head_dim", "must be hidden_size / num_attention_heads");
  }
  return args;
}

using FileMap = std::map<std::string, std::shared_ptr<TensorFile>>;  // tensor name -> its file

// An HF index's weight_map, each file opened once, checked both ways against the files' contents.
FileMap open_indexed_files(const fs::path& dir, const fs::path& index_path) {
  const json index = read_json(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw InputError(index_path.string() + ": no \"weight_map\" object");
  }
  FileMap where;
  std::map<std::string, std::shared_ptr<TensorFile>> files;  // by file name
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
      throw InputError(index_path.string() + ": weight_map['" + name +
                       "'] is not a file name beside the index: " + file.dump());
    }
    auto& opened = files[file.get<std::string>()];
    if (!opened) {
      const fs::path path = dir / file.get<std::string>();
      if (!fs::exists(path)) {
        throw InputError(index_path.string() + ": weight_map['" + name + "'] names " +
                         path.string() + ", which does not exist");
      }
      opened = open_tensor_file(path);
    }
    if (opened->find(name) == nullptr) {
      throw InputError(opened->path().string() + ": has no tensor '" + name + "' that " +
                       index_path.string() + " places there");
    }
    where[name] = opened;
  }
  for (const auto& [file, opened] : files) {
    for (const auto& info : opened->tensors()) {
      const auto it = where.find(info.name);
      if (it == where.end() || it->second != opened) {
        throw InputError(opened->path().string() + ": tensor '" + info.name +
                         "' is not listed for this file in " + index_path.string());
      }
    }
  }
  return where;
}

// The weights of an HF directory: by index (safetensors, else pytorch_model.bin), else the one
// weights file. Files are read by content, whatever their extension.
FileMap open_hf_files(const fs::path& dir) {
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (fs::exists(dir / index)) return open_indexed_files(dir, dir / index);
  }
  for (const char* single : {"model.safetensors", "pytorch_model.bin"}) {
    if (!fs::exists(dir / single)) continue;
    std::shared_ptr<TensorFile> file = open_tensor_file(dir / single);
    FileMap where;
    for (const auto& info : file->tensors()) where[info.name] = file;
    return where;
  }
  throw InputError(dir.string() + ": config.json but no model.safetensors, " +
                   "model.safetensors.index.json, pytorch_model.bin or its index");
}

OpenWeights open_hf(const fs::path& dir) {
  OpenWeights stored{read_hf_args(dir), dir.string(), {}, [](const std::string& meta) {
                       return meta_to_hf_name(meta).value_or(meta);
                     }};
  const int64_t n_heads = stored.args.n_heads;
  const int64_t n_kv_heads = stored.args.kv_heads();
  for (const auto& [name, file] : open_hf_files(dir)) {
    if (is_known_non_weight(name)) continue;
    const auto meta = hf_to_meta_name(name);
    if (!meta) {
      throw InputError(file->path().string() + ": unexpected tensor '" + name +
                       "' (not in the HF <-> Meta name table)");
    }
    // Rows of wq/wk come in rotate-half order: un-permute them (with n_kv_heads for wk).
    int64_t permuted_heads = 0;
    if (const auto layer = split_layer_name(*meta, "layers.")) {
      if (layer->second == "attention.wq.weight") permuted_heads = n_heads;
      if (layer->second == "attention.wk.weight") permuted_heads = n_kv_heads;
    }
    const TensorInfo& info = *file->find(name);
    Source source{file->path().string(), name, info.shape, info.dtype, nullptr};
    source.copy_into = [file = file, name = name, permuted_heads](at::Tensor& dst) {
      const at::Tensor t = file->read(name);
      dst.copy_(permuted_heads > 0 ? unpermute_hf_rows(t, permuted_heads) : t);
    };
    stored.add(*meta, std::move(source));
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------
// llama2.c legacy .bin: header int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
// (negative: separate classifier follows), seq_len; then fp32 tensors in (out, in) order, each
// kind for all layers in turn (run.c memory_map_weights).

constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42": llama2.c export versions 1 and 2

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// The header if `file` looks like a legacy llama2.c file (plausible values), else nullopt. The
// bounds keep every size computed from the header far from 64-bit overflow.
std::optional<Llama2cHeader> read_llama2c_header(const BinaryFile& file) {
  Llama2cHeader h{};
  if (file.size() < sizeof(h)) return std::nullopt;
  file.read(0, &h, sizeof(h), "the llama2.c header");
  const int32_t limit = 1 << 20;
  auto ok = [&](int32_t v) { return v > 0 && v < limit; };
  if (h.vocab_size < -limit) return std::nullopt;
  if (!ok(h.dim) || !ok(h.hidden_dim) || !ok(h.n_layers) || !ok(h.n_heads) || !ok(h.n_kv_heads) ||
      !ok(std::abs(h.vocab_size)) || !ok(h.seq_len) || h.dim % h.n_heads != 0 ||
      h.n_heads % h.n_kv_heads != 0 || (h.dim / h.n_heads) % 2 != 0) {
    return std::nullopt;
  }
  return h;
}

ModelArgs llama2c_args(const Llama2cHeader& h) {
  ModelArgs args;
  args.dim = h.dim;
  args.hidden_dim = h.hidden_dim;
  args.n_layers = h.n_layers;
  args.n_heads = h.n_heads;
  args.n_kv_heads = h.n_kv_heads;
  args.vocab_size = std::abs(h.vocab_size);
  args.max_seq_len = h.seq_len;
  args.tie_embeddings = h.vocab_size > 0;  // positive: output shares tok_embeddings
  args.norm_eps = 1e-5;                    // run.c's rmsnorm
  return args;
}

Llama2cHeader llama2c_header_or_throw(const BinaryFile& file) {
  uint32_t magic = 0;
  if (file.size() >= 4) file.read(0, &magic, 4, "the magic number");
  if (magic == kLlama2cMagic) {
    throw InputError(file.path().string() +
                     ": llama2.c export version >= 1 (magic ak42); llt reads the legacy format "
                     "(export.py --version 0)");
  }
  const auto header = read_llama2c_header(file);
  if (!header) {
    throw InputError(file.path().string() + ": not a checkpoint llt knows (not a directory with " +
                     "params.json or config.json, and no plausible llama2.c header)");
  }
  return *header;
}

// Bytes of a legacy llama2.c file with these args, in run.c's order (header, embeddings, 9
// per-layer kinds, final norm, two RoPE tables of (seq_len, head_dim / 2), output unless
// tied); UINT64_MAX when that overflows.
uint64_t llama2c_implied_size(const ModelArgs& a,
                              const std::map<std::string, std::vector<int64_t>>& block) {
  uint64_t per_layer = 0;  // floats
  for (const auto& [name, shape] : block) per_layer += c10::multiply_integers(shape);
  const uint64_t embeddings = static_cast<uint64_t>(a.vocab_size) * a.dim;
  const uint64_t rope = 2 * static_cast<uint64_t>(a.max_seq_len) * (a.head_dim() / 2);
  uint64_t floats = 0;
  if (__builtin_mul_overflow(per_layer, static_cast<uint64_t>(a.n_layers), &floats) ||
      __builtin_add_overflow(floats, embeddings * (a.tie_embeddings ? 1 : 2) + a.dim + rope,
                             &floats) ||
      __builtin_mul_overflow(floats, sizeof(float), &floats) ||
      __builtin_add_overflow(floats, sizeof(Llama2cHeader), &floats)) {
    return UINT64_MAX;
  }
  return floats;
}

[[noreturn]] void llama2c_size_mismatch(const fs::path& path, const Llama2cHeader& h,
                                        uint64_t implied, uint64_t size) {
  throw InputError(path.string() + ": llama2.c header (dim " + std::to_string(h.dim) +
                   ", hidden_dim " + std::to_string(h.hidden_dim) + ", n_layers " +
                   std::to_string(h.n_layers) + ", vocab_size " + std::to_string(h.vocab_size) +
                   ", seq_len " + std::to_string(h.seq_len) + ") implies " +
                   (implied == UINT64_MAX ? std::string("more than 2^64") : std::to_string(implied)) +
                   " bytes, the file has " + std::to_string(size) +
                   "; truncated or not a legacy llama2.c file?");
}

OpenWeights open_llama2c(const fs::path& path) {
  auto file = std::make_shared<BinaryFile>(path);
  const Llama2cHeader h = llama2c_header_or_throw(*file);
  OpenWeights stored{llama2c_args(h), path.string(), {}, [](const std::string& n) { return n; }};
  const ModelArgs& a = stored.args;

  uint64_t offset = sizeof(Llama2cHeader);  // bytes
  auto take = [&](const std::string& name, std::vector<int64_t> shape) {
    const int64_t numel = c10::multiply_integers(shape);
    const uint64_t begin = offset;
    offset += static_cast<uint64_t>(numel) * sizeof(float);
    if (name.empty()) return;  // skipped (freq_cis tables)
    Source source{path.string(), name, shape, at::kFloat, nullptr};
    source.copy_into = [file, begin, shape, name](at::Tensor& dst) {
      at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
      file->read(begin, t.data_ptr(), t.numel() * sizeof(float), "tensor '" + name + "'");
      dst.copy_(t);
    };
    stored.add(name, std::move(source));
  };
  const auto block_shapes = block_parameter_shapes(a);
  const std::map<std::string, std::vector<int64_t>> block(block_shapes.begin(), block_shapes.end());
  // The size the header implies, checked before one entry per tensor is made: a 76-byte file
  // may claim 2^20 layers, which would otherwise cost seconds and gigabytes to refuse.
  const uint64_t implied = llama2c_implied_size(a, block);
  if (implied != file->size()) llama2c_size_mismatch(path, h, implied, file->size());
  take("tok_embeddings.weight", {a.vocab_size, a.dim});
  for (const char* kind :
       {"attention_norm.weight", "attention.wq.weight", "attention.wk.weight",
        "attention.wv.weight", "attention.wo.weight", "ffn_norm.weight", "feed_forward.w1.weight",
        "feed_forward.w2.weight", "feed_forward.w3.weight"}) {  // run.c's order
    for (int64_t i = 0; i < a.n_layers; ++i) {
      take("layers." + std::to_string(i) + "." + kind, block.at(kind));
    }
  }
  take("norm.weight", {a.dim});
  take("", {a.max_seq_len, a.head_dim() / 2});  // freq_cis_real, recomputed by the model
  take("", {a.max_seq_len, a.head_dim() / 2});  // freq_cis_imag
  if (!a.tie_embeddings) take("output.weight", {a.vocab_size, a.dim});
  if (offset != file->size()) {
    throw RuntimeError("internal: " + path.string() + ": llama2.c tensors end at byte " +
                       std::to_string(offset) + ", the size check said " +
                       std::to_string(implied));
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------

// The directory holding Meta/HF weights: `path` itself, or the directory of a weights file.
fs::path weights_dir(const fs::path& path) {
  if (fs::is_directory(path)) return path;
  const fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

OpenWeights open_weights(const fs::path& path, WeightsFormat format) {
  switch (format) {
    case WeightsFormat::kMeta:
      return open_meta(weights_dir(path));
    case WeightsFormat::kHuggingFace:
      return open_hf(weights_dir(path));
    case WeightsFormat::kLlama2c:
      return open_llama2c(path);
    case WeightsFormat::kPreset:
      break;  // load_model builds preset models itself
  }
  throw RuntimeError("unknown weights format");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API

std::string format_name(WeightsFormat format) {
  switch (format) {
    case WeightsFormat::kMeta:
      return "meta";
    case WeightsFormat::kHuggingFace:
      return "huggingface";
    case WeightsFormat::kLlama2c:
      return "llama2c";
    case WeightsFormat::kPreset:
      return "preset";
  }
  return "unknown";
}

std::string preset_model_name(const fs::path& path) {
  const std::string s = path.string();
  return s.rfind("preset:", 0) == 0 ? s.substr(7) : "";
}

WeightsFormat detect_format(const fs::path& path) {
  if (!preset_model_name(path).empty()) return WeightsFormat::kPreset;
  if (!fs::exists(path)) throw InputError(path.string() + ": no such file or directory");
  if (fs::is_directory(path)) {
    const bool meta = fs::exists(path / "params.json");
    const bool hf = fs::exists(path / "config.json");
    if (meta && hf) {
      throw InputError(path.string() + ": has both params.json (Meta) and config.json (Hugging " +
                       "Face); pass the weights file or a directory with one of them");
    }
    if (meta) return WeightsFormat::kMeta;
    if (hf) return WeightsFormat::kHuggingFace;
    throw InputError(path.string() + ": directory has neither params.json (Meta) nor " +
                     "config.json (Hugging Face)");
  }
  const TensorFileKind kind = sniff_tensor_file(path);
  if (kind == TensorFileKind::kOther) {
    llama2c_header_or_throw(BinaryFile(path));
    return WeightsFormat::kLlama2c;
  }
  // A .pth / safetensors file: its directory's configuration names the format.
  const fs::path dir = weights_dir(path);
  if (fs::exists(dir / "params.json") && kind == TensorFileKind::kTorchZip) {
    return WeightsFormat::kMeta;
  }
  if (fs::exists(dir / "config.json")) return WeightsFormat::kHuggingFace;
  throw InputError(path.string() + ": a weights file without params.json (Meta) or config.json " +
                   "(Hugging Face) beside it");
}

ModelArgs read_model_args(const fs::path& path) {
  ModelArgs args;
  switch (detect_format(path)) {
    case WeightsFormat::kPreset:
      return preset_args(preset_model_name(path));
    case WeightsFormat::kMeta:
      args = read_meta_args(weights_dir(path));
      break;
    case WeightsFormat::kHuggingFace:
      args = read_hf_args(weights_dir(path));
      break;
    case WeightsFormat::kLlama2c: {
      const BinaryFile file(path);
      args = llama2c_args(llama2c_header_or_throw(file));
      break;
    }
  }
  args.validate(path.string());
  return args;
}

struct WeightsReader::Impl {
  WeightsFormat format;
  ModelArgs kept;
  OpenWeights stored;  // not for presets
  // Presets: the generator init_random() draws from (CPU, seed 0) and the next parameter due.
  std::optional<at::Generator> generator;
  std::vector<std::pair<std::string, std::vector<int64_t>>> order;
  size_t next = 0;
};

WeightsReader::WeightsReader(const fs::path& path, int64_t n_layers)
    : impl_(std::make_unique<Impl>()) {
  Impl& r = *impl_;
  r.format = detect_format(path);
  if (r.format == WeightsFormat::kPreset) {
    r.kept = preset_args(preset_model_name(path));
    if (n_layers > 0) r.kept.n_layers = n_layers;  // as load_model: any depth of that shape
    r.generator = at::make_generator<at::CPUGeneratorImpl>(/*seed=*/0);
    r.order = parameter_shapes(r.kept);
    return;
  }
  r.stored = open_weights(path, r.format);
  r.stored.args.validate(r.stored.source);
  r.kept = r.stored.args;
  if (n_layers < 0 || n_layers > r.stored.args.n_layers) {
    throw InputError(r.stored.source + ": --n-layers " + std::to_string(n_layers) +
                     " is outside [1, " + std::to_string(r.stored.args.n_layers) +
                     "] (the checkpoint's n_layers)");
  }
  if (n_layers > 0) r.kept.n_layers = n_layers;
  check_tensors(r.stored, r.kept);
}

WeightsReader::~WeightsReader() = default;
WeightsReader::WeightsReader(WeightsReader&&) noexcept = default;
WeightsReader& WeightsReader::operator=(WeightsReader&&) noexcept = default;

const ModelArgs& WeightsReader::args() const { return impl_->kept; }
WeightsFormat WeightsReader::format() const { return impl_->format; }

c10::ScalarType WeightsReader::stored_dtype() const {
  const Impl& r = *impl_;
  if (r.format == WeightsFormat::kPreset) return at::kFloat;
  const Source* first = nullptr;
  for (const auto& [name, shape] : parameter_shapes(r.kept)) {
    const Source& source = r.stored.tensors.at(name);
    if (first == nullptr) first = &source;
    if (source.dtype != first->dtype) {
      throw InputError(r.stored.source + ": tensors are stored in different dtypes ('" +
                       first->key + "' " + dtype_name(first->dtype) + ", '" + source.key + "' " +
                       dtype_name(source.dtype) + "); pass --dtype");
    }
  }
  return first->dtype;
}

at::Tensor WeightsReader::read(const std::string& name) {
  Impl& r = *impl_;
  if (r.format == WeightsFormat::kPreset) {
    if (r.next >= r.order.size() || r.order[r.next].first != name) {
      throw RuntimeError("internal: preset weights are drawn in parameter order; asked for '" +
                         name + "', next is '" +
                         (r.next < r.order.size() ? r.order[r.next].first : "none") + "'");
    }
    at::Tensor values = at::empty(r.order[r.next].second, at::kFloat);
    draw_random_weight(values, *r.generator);
    ++r.next;
    return values;
  }
  const auto it = r.stored.tensors.find(name);
  if (it == r.stored.tensors.end()) {
    throw RuntimeError("internal: no tensor for parameter '" + name + "' in " + r.stored.source);
  }
  at::Tensor t = at::empty(it->second.shape, at::TensorOptions().dtype(it->second.dtype));
  it->second.copy_into(t);
  return t;
}

void WeightsReader::copy_into(const std::string& name, at::Tensor& dst) {
  Impl& r = *impl_;
  if (r.format == WeightsFormat::kPreset) {
    dst.copy_(read(name));
    return;
  }
  const auto it = r.stored.tensors.find(name);
  if (it == r.stored.tensors.end()) {
    throw RuntimeError("internal: model parameter '" + name + "' is not in parameter_shapes()");
  }
  it->second.copy_into(dst);
}

LoadedModel load_model(const fs::path& path, const LoadOptions& options) {
  const WeightsFormat format = detect_format(path);
  if (format == WeightsFormat::kPreset) {  // drawn in place, on the device (init_random)
    ModelArgs args = preset_args(preset_model_name(path));
    if (options.n_layers > 0) args.n_layers = options.n_layers;
    Transformer model(args, torch::TensorOptions().device(options.device).dtype(options.dtype));
    model->init_random(/*seed=*/0);
    return {args, model, format, path};
  }
  WeightsReader reader(path, options.n_layers);
  Transformer model(reader.args(), at::TensorOptions().device(options.device).dtype(options.dtype));
  at::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) reader.copy_into(item.key(), item.value());
  return LoadedModel{reader.args(), model, format, path};
}

}  // namespace llt
