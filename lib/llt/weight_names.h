// Names and layouts of LLaMA weights across formats (parameters keep Meta's names, always): the
// one HF <-> Meta name table, Meta's model-parallel split of each kind and Hugging Face's
// rotate-half row order of wq/wk. Shared by the weights loader (lib/llt/weights) and the
// exporters (LoRA adapters, merged models).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>

namespace llt {

// The one HF <-> Meta name table. Maps module paths with any suffix:
// "model.layers.3.self_attn.q_proj.weight" <-> "layers.3.attention.wq.weight",
// "model.layers.3.self_attn.q_proj.lora_A.weight" <-> "layers.3.attention.wq.lora_A.weight".
// std::nullopt when the name is not in the table.
std::optional<std::string> hf_to_meta_name(const std::string& hf_name);
std::optional<std::string> meta_to_hf_name(const std::string& meta_name);

// The dimension Meta's model-parallel shards split the Meta parameter `meta_name` along
// (fairscale ParallelEmbedding 1, ColumnParallelLinear 0, RowParallelLinear 1); -1 when it is
// replicated in every shard or not in the table.
int meta_shard_dim(const std::string& meta_name);

// "layers.12.rest" (prefix "layers.") -> {12, "rest"}; std::nullopt when `name` is not `prefix`,
// a layer number and a dot.
std::optional<std::pair<int64_t, std::string>> split_layer_name(const std::string& name,
                                                                const std::string& prefix);

// Buffers that real checkpoints carry but that are not weights (recomputed by the model):
// Meta's "rope.freqs", early HF Llama-2's "model.layers.N.self_attn.rotary_emb.inv_freq".
bool is_known_non_weight(const std::string& name);

// HF stores wq/wk rows per head in rotate-half order (transformers'
// convert_llama_weights_to_hf.py permute()). Returns Meta's interleaved-pair row order; w is
// (heads * hd, ...) and `n_heads` is n_heads for wq, n_kv_heads for wk.
at::Tensor unpermute_hf_rows(const at::Tensor& w, int64_t n_heads);
// The inverse (Meta -> HF rows), for exports.
at::Tensor permute_hf_rows(const at::Tensor& w, int64_t n_heads);

}  // namespace llt
