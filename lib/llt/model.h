// The LLaMA-2 transformer, with Meta's architecture and parameter names (llama/model.py), so
// named_parameters() keys equal Meta checkpoint keys ("layers.3.attention.wq.weight").
//
// Shape legend used in the comments:
//   B batch, T new tokens in this call, S attended positions (cache length + T),
//   D dim, H n_heads, KV n_kv_heads, hd head_dim = D / H, F ffn hidden size, V vocab size.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

namespace llt {

// Model hyper-parameters. Read from a checkpoint's own params.json / config.json / header,
// or from a preset; never guessed from a file name.
struct ModelArgs {
  int64_t dim = 4096;             // D, model width
  int64_t n_layers = 32;          // transformer blocks
  int64_t n_heads = 32;           // H, query heads
  int64_t n_kv_heads = 0;         // KV, key/value heads; 0 = n_heads (Meta params.json may omit it)
  int64_t vocab_size = 32000;     // V
  int64_t multiple_of = 256;      // Meta's SwiGLU hidden-size rounding
  double ffn_dim_multiplier = 0;  // Meta's optional hidden-size multiplier; 0 = none
  int64_t hidden_dim = 0;         // explicit FFN size F (llama2.c, HF intermediate_size); 0 = Meta rule
  double norm_eps = 1e-5;         // RMSNorm epsilon
  double rope_theta = 10000.0;    // RoPE base
  int64_t max_seq_len = 4096;     // longest sequence the RoPE tables and KV cache cover
  bool tie_embeddings = false;    // output.weight is tok_embeddings.weight (llama2.c shared classifier)

  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t head_dim() const { return dim / n_heads; }
  // F: hidden_dim if set, else Meta's rule (2/3 of 4D, times the multiplier, rounded up to
  // multiple_of): 11008 for the 7B model.
  int64_t ffn_hidden() const;
  // Parameter count of the model these args describe (tied embeddings counted once).
  int64_t num_parameters() const;
  // Throws InputError naming `source` and the field when the args are inconsistent.
  void validate(const std::string& source) const;
};

// Named presets: "llama2_7b", "llama2_13b", "tiny" (a 2-layer GQA model for tests).
// Throws InputError on an unknown name.
ModelArgs preset_args(const std::string& name);
std::vector<std::string> preset_names();

// Weight shapes, derived here once from the args (the model, the weights loader, LoRA and the
// memory estimate use them). (out, in) of the linear map `name` of a block: "wq", "wk", "wv",
// "wo" (attention), "w1", "w2", "w3" (feed-forward); RuntimeError on another name.
std::pair<int64_t, int64_t> block_linear_shape(const ModelArgs& args, const std::string& name);
// One block's parameters, named under "layers.N." ("attention.wq.weight"), with their shapes, in
// the order TransformerBlock registers them.
std::vector<std::pair<std::string, std::vector<int64_t>>> block_parameter_shapes(
    const ModelArgs& args);
// Parameter names and shapes of the model `args` describes, as Transformer registers them,
// computed without building it.
std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelArgs& args);

// A linear map without bias, y = x W^T, weight (out, in) under the name "weight". Parameters are
// allocated uninitialised on the target device/dtype: loaders fill them, init_random() for tests.
// Virtual forward so LoRA can wrap it in place (lib/llt/lora).
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, const torch::TensorOptions& options);
  virtual ~LinearImpl() = default;
  virtual torch::Tensor forward(const torch::Tensor& x);

  // forward(x)'s shape, dtype and autograd graph (the same gradients for x and every weight,
  // bitwise on CPU) without its values, which are zero: for an activation recomputation whose
  // output only carries gradients back (lib/llt/recompute), it skips the base matmul.
  virtual torch::Tensor forward_for_gradients(const torch::Tensor& x);

  torch::Tensor weight;  // (out, in)
};
TORCH_MODULE(Linear);

// Token embedding table, weight (V, D) under the name "weight".
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t dim, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& tokens);  // (B, T) int64 -> (B, T, D)

  torch::Tensor weight;  // (V, D)
};
TORCH_MODULE(Embedding);

// x / rms(x) * weight, computed in fp32 and cast back to x's dtype (as Meta does).
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // (D)
  double eps;
};
TORCH_MODULE(RMSNorm);

// Rotary embedding tables for Meta's interleaved-pair convention: pair (2i, 2i+1) of each head
// is rotated by angle pos * theta^(-2i/hd). Tables are fp32, (max_seq_len, hd/2).
struct RopeTables {
  torch::Tensor cos;  // (max_seq_len, hd/2)
  torch::Tensor sin;  // (max_seq_len, hd/2)
  // The same tables laid out per element for apply_rope's pair-swap form:
  // cos_pairs[p] = (cos0, cos0, cos1, cos1, ...), sin_pairs[p] = (-sin0, sin0, -sin1, sin1, ...).
  torch::Tensor cos_pairs;  // (max_seq_len, hd)
  torch::Tensor sin_pairs;  // (max_seq_len, hd)
};
RopeTables make_rope_tables(int64_t head_dim, int64_t max_seq_len, double theta,
                            const torch::Device& device);
// x (B, T, heads, hd) rotated for positions [start, start+T); computed in fp32, returned in x's dtype.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope, int64_t start);

// Per-layer key/value cache for incremental decoding, passed explicitly to forward.
struct KVCache {
  // Heads before positions, so the filled prefix narrow(2, 0, S) is a batched matrix that
  // matmul takes without a copy.
  std::vector<torch::Tensor> k;  // per layer (B, KV, max_len, hd)
  std::vector<torch::Tensor> v;  // per layer (B, KV, max_len, hd)
  int64_t length = 0;            // positions filled so far (the next call starts here)

  // Zero-filled cache for `batch` sequences of up to `max_len` positions.
  static KVCache allocate(const struct ModelArgs& args, int64_t batch, int64_t max_len,
                          const torch::TensorOptions& options);
  int64_t capacity() const { return k.empty() ? 0 : k.front().size(2); }
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelArgs& args, const torch::TensorOptions& options);
  // x (B, T, D) at positions [start, start+T). With `cache` (this layer's k, v), new keys and
  // values are written into it and attention covers [0, start+T); without, S = T and start = 0.
  torch::Tensor forward(const torch::Tensor& x, const RopeTables& rope, int64_t start,
                        torch::Tensor* cache_k, torch::Tensor* cache_v);

  std::shared_ptr<LinearImpl> wq, wk, wv, wo;  // (H*hd, D), (KV*hd, D), (KV*hd, D), (D, H*hd)
  int64_t n_heads, n_kv_heads, head_dim;
};
TORCH_MODULE(Attention);

// SwiGLU: w2(silu(w1 x) * w3 x).
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(const ModelArgs& args, const torch::TensorOptions& options);
  // w2(silu(w1 x) * w3 x). With output_values false, w2 runs forward_for_gradients: the result
  // has the right graph and gradients but not the right values (activation recomputation).
  torch::Tensor forward(const torch::Tensor& x, bool output_values = true);

  std::shared_ptr<LinearImpl> w1, w2, w3;  // (F, D), (D, F), (F, D)
};
TORCH_MODULE(FeedForward);

class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(const ModelArgs& args, const torch::TensorOptions& options);
  // Pre-norm residual block: h = x + attn(norm(x)); out = h + ffn(norm(h)).
  torch::Tensor forward(const torch::Tensor& x, const RopeTables& rope, int64_t start,
                        torch::Tensor* cache_k, torch::Tensor* cache_v);
  // Its halves, forward = ffn_half(attention_half(x)): h = x + attn(norm(x)), and
  // h + ffn(norm(h)) (output_values as FeedForwardImpl::forward's).
  torch::Tensor attention_half(const torch::Tensor& x, const RopeTables& rope, int64_t start,
                               torch::Tensor* cache_k, torch::Tensor* cache_v);
  torch::Tensor ffn_half(const torch::Tensor& h, bool output_values = true);

  Attention attention{nullptr};
  FeedForward feed_forward{nullptr};
  RMSNorm attention_norm{nullptr};
  RMSNorm ffn_norm{nullptr};
};
TORCH_MODULE(TransformerBlock);

// One parameter's random values as init_random() draws them, in place into the fp32 `values`
// (the parameter's shape): normal(0, 0.02), or 1 + normal(0, 0.1) for a 1-d (norm) weight.
void draw_random_weight(torch::Tensor& values, at::Generator& generator);

class TransformerImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (device, dtype); fill them with a
  // loader (lib/llt/weights) or init_random().
  TransformerImpl(const ModelArgs& args, const torch::TensorOptions& options);

  // tokens (B, T) int64 -> logits (B, T, V) in the parameters' dtype. Without a cache the whole
  // sequence is computed with a causal mask. With one, the tokens sit at positions
  // [cache->length, cache->length + T) and cache->length advances by T.
  torch::Tensor forward(const torch::Tensor& tokens, KVCache* cache = nullptr);

  // forward() in two halves: the final norm's output (B, T, D), and the output projection of
  // any (..., D) rows of it. Training and scoring project only the rows whose next token counts.
  torch::Tensor hidden(const torch::Tensor& tokens, KVCache* cache = nullptr);
  torch::Tensor logits(const torch::Tensor& hidden);

  // Deterministic random weights for tests and benchmarks: normal(0, 0.02) for matrices,
  // 1 + normal(0, 0.1) for norm weights, from a generator seeded with `seed`, drawn in parameter
  // order with draw_random_weight.
  void init_random(uint64_t seed);

  const ModelArgs& args() const { return args_; }
  const RopeTables& rope() const { return rope_; }

  Embedding tok_embeddings{nullptr};  // weight (V, D)
  torch::nn::ModuleList layers{nullptr};  // of TransformerBlock
  RMSNorm norm{nullptr};
  // (V, D). Not registered when args.tie_embeddings: the logits then use tok_embeddings.weight,
  // so the shared parameter appears (and is trained) once.
  std::shared_ptr<LinearImpl> output;

  // Block i, typed.
  TransformerBlockImpl& block(size_t i) { return *layers->ptr<TransformerBlockImpl>(i); }

 private:
  ModelArgs args_;
  RopeTables rope_;
};
TORCH_MODULE(Transformer);

}  // namespace llt
