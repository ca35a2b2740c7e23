#include "llt/weight_names.h"

#include <algorithm>
#include <iterator>

#include <ATen/ATen.h>

namespace llt {
namespace {

// ---------------------------------------------------------------------------------------------
// The one HF <-> Meta name table, with Meta's model-parallel split dimension of each kind
// (fairscale ParallelEmbedding splits dim 1, ColumnParallelLinear dim 0, RowParallelLinear
// dim 1; -1: replicated in every shard).

struct NameRow {
  const char* hf;
  const char* meta;
  int shard_dim;
};

constexpr NameRow kTopLevelNames[] = {
    {"model.embed_tokens", "tok_embeddings", 1},
    {"model.norm", "norm", -1},
    {"lm_head", "output", 0},
};

// clang-format off
constexpr NameRow kLayerNames[] = {  // under "model.layers.N." / "layers.N."
    {"self_attn.q_proj",         "attention.wq",    0},
    {"self_attn.k_proj",         "attention.wk",    0},
    {"self_attn.v_proj",         "attention.wv",    0},
    {"self_attn.o_proj",         "attention.wo",    1},
    {"mlp.gate_proj",            "feed_forward.w1", 0},
    {"mlp.down_proj",            "feed_forward.w2", 1},
    {"mlp.up_proj",              "feed_forward.w3", 0},
    {"input_layernorm",          "attention_norm", -1},
    {"post_attention_layernorm", "ffn_norm",       -1},
};
// clang-format on

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Maps a name through the table (HF -> Meta or back), keeping what follows the module path.
std::optional<std::string> map_module(const std::string& name, bool to_meta) {
  auto lookup = [&](const std::string& rest, const NameRow* begin,
                    const NameRow* end) -> std::optional<std::string> {
    for (const NameRow* row = begin; row != end; ++row) {
      const std::string from = to_meta ? row->hf : row->meta;
      if (rest.size() > from.size() && starts_with(rest, from) && rest[from.size()] == '.') {
        return (to_meta ? row->meta : row->hf) + rest.substr(from.size());
      }
    }
    return std::nullopt;
  };
  const std::string layer_prefix = to_meta ? "model.layers." : "layers.";
  if (const auto layer = split_layer_name(name, layer_prefix)) {
    const auto mapped = lookup(layer->second, std::begin(kLayerNames), std::end(kLayerNames));
    if (!mapped) return std::nullopt;
    return (to_meta ? "layers." : "model.layers.") + std::to_string(layer->first) + "." + *mapped;
  }
  return lookup(name, std::begin(kTopLevelNames), std::end(kTopLevelNames));
}

// The table row of a Meta parameter name ("layers.3.attention.wo.weight" -> wo's row).
const NameRow* meta_row(const std::string& meta_name) {
  std::string rest = meta_name;
  const NameRow* begin = std::begin(kTopLevelNames);
  const NameRow* end = std::end(kTopLevelNames);
  if (const auto layer = split_layer_name(meta_name, "layers.")) {
    rest = layer->second;
    begin = std::begin(kLayerNames);
    end = std::end(kLayerNames);
  }
  for (const NameRow* row = begin; row != end; ++row) {
    if (starts_with(rest, std::string(row->meta) + ".")) return row;
  }
  return nullptr;
}

}  // namespace

std::optional<std::pair<int64_t, std::string>> split_layer_name(const std::string& name,
                                                                const std::string& prefix) {
  if (!starts_with(name, prefix)) return std::nullopt;
  const size_t dot = name.find('.', prefix.size());
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (dot == std::string::npos || digits.empty() || digits.size() > 9 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::make_pair(std::stoll(digits), name.substr(dot + 1));
}

std::optional<std::string> hf_to_meta_name(const std::string& hf_name) {
  return map_module(hf_name, /*to_meta=*/true);
}

std::optional<std::string> meta_to_hf_name(const std::string& meta_name) {
  return map_module(meta_name, /*to_meta=*/false);
}

bool is_known_non_weight(const std::string& name) {
  if (name == "rope.freqs") return true;
  const auto layer = split_layer_name(name, "model.layers.");
  return layer && layer->second == "self_attn.rotary_emb.inv_freq";
}

// transformers' permute(): w.view(h, hd/2, 2, cols).transpose(1, 2).reshape(rows, cols), i.e.
// within each head, Meta row 2i+j goes to HF row j*hd/2 + i. Un-permuting swaps the two views.
at::Tensor unpermute_hf_rows(const at::Tensor& w, int64_t n_heads) {
  TORCH_CHECK(w.dim() >= 1 && n_heads > 0 && w.size(0) % (2 * n_heads) == 0,
              "unpermute_hf_rows: ", w.sizes(), " rows do not split into ", n_heads,
              " heads of even size");
  const int64_t half = w.size(0) / n_heads / 2;
  return w.reshape({n_heads, 2, half, -1}).transpose(1, 2).reshape(w.sizes());
}

at::Tensor permute_hf_rows(const at::Tensor& w, int64_t n_heads) {
  TORCH_CHECK(w.dim() >= 1 && n_heads > 0 && w.size(0) % (2 * n_heads) == 0,
              "permute_hf_rows: ", w.sizes(), " rows do not split into ", n_heads,
              " heads of even size");
  const int64_t half = w.size(0) / n_heads / 2;
  return w.reshape({n_heads, half, 2, -1}).transpose(1, 2).reshape(w.sizes());
}

int meta_shard_dim(const std::string& meta_name) {
  const NameRow* row = meta_row(meta_name);
  return row == nullptr ? -1 : row->shard_dim;
}

}  // namespace llt
