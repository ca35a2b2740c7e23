#include "llt/model.h"

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/init.h>

#include "llt/attention.h"
#include "llt/compat.h"
#include "llt/errors.h"
#include "llt/runtime.h"

namespace llt {

// ---------------------------------------------------------------------------------------------
// ModelArgs and presets

int64_t ModelArgs::ffn_hidden() const {
  if (hidden_dim > 0) return hidden_dim;
  // Meta llama/model.py FeedForward: 4D, times 2/3, times the optional multiplier, rounded up.
  int64_t hidden = 4 * dim;
  hidden = 2 * hidden / 3;
  if (ffn_dim_multiplier > 0) hidden = static_cast<int64_t>(ffn_dim_multiplier * hidden);
  return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

int64_t ModelArgs::num_parameters() const {
  int64_t count = 0;  // tied embeddings: parameter_shapes lists the table once
  for (const auto& [name, shape] : parameter_shapes(*this)) count += c10::multiply_integers(shape);
  return count;
}

void ModelArgs::validate(const std::string& source) const {
  auto fail = [&](const std::string& field, const std::string& why) {
    throw InputError(source + ": model field '" + field + "' " + why);
  };
  if (dim <= 0) fail("dim", "must be positive, got " + std::to_string(dim));
  if (n_layers <= 0) fail("n_layers", "must be positive, got " + std::to_string(n_layers));
  if (n_heads <= 0) fail("n_heads", "must be positive, got " + std::to_string(n_heads));
  if (n_kv_heads < 0) fail("n_kv_heads", "must be >= 0, got " + std::to_string(n_kv_heads));
  if (vocab_size <= 0) fail("vocab_size", "must be positive, got " + std::to_string(vocab_size));
  if (dim % n_heads != 0) {
    fail("dim", std::to_string(dim) + " is not a multiple of n_heads " + std::to_string(n_heads));
  }
  if (n_heads % kv_heads() != 0) {
    fail("n_kv_heads", std::to_string(kv_heads()) + " does not divide n_heads " +
                           std::to_string(n_heads));
  }
  if (head_dim() % 2 != 0) fail("dim", "head_dim " + std::to_string(head_dim()) + " must be even");
  if (hidden_dim == 0 && multiple_of <= 0) {
    fail("multiple_of", "must be positive, got " + std::to_string(multiple_of));
  }
  if (hidden_dim < 0) fail("hidden_dim", "must be >= 0, got " + std::to_string(hidden_dim));
  if (norm_eps <= 0) fail("norm_eps", "must be positive");
  if (rope_theta <= 0) fail("rope_theta", "must be positive");
  if (max_seq_len <= 0) fail("max_seq_len", "must be positive, got " + std::to_string(max_seq_len));
}

ModelArgs preset_args(const std::string& name) {
  ModelArgs args;  // defaults are LLaMA-2-7B (Meta params.json)
  if (name == "llama2_7b") return args;
  if (name == "llama2_13b") {
    args.dim = 5120;
    args.n_layers = 40;
    args.n_heads = 40;
    return args;
  }
  if (name == "tiny") {  // a small GQA model for tests and the CPU demos
    args.dim = 64;
    args.n_layers = 2;
    args.n_heads = 8;
    args.n_kv_heads = 4;
    args.vocab_size = 512;
    args.multiple_of = 32;
    args.max_seq_len = 512;
    return args;
  }
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw InputError("unknown model preset '" + name + "' (known: " + known + ")");
}

std::vector<std::string> preset_names() { return {"llama2_7b", "llama2_13b", "tiny"}; }

// ---------------------------------------------------------------------------------------------
// Weight shapes

std::pair<int64_t, int64_t> block_linear_shape(const ModelArgs& args, const std::string& name) {
  const int64_t d = args.dim, f = args.ffn_hidden();
  const int64_t q = args.n_heads * args.head_dim(), kv = args.kv_heads() * args.head_dim();
  if (name == "wq") return {q, d};
  if (name == "wk" || name == "wv") return {kv, d};
  if (name == "wo") return {d, q};
  if (name == "w1" || name == "w3") return {f, d};
  if (name == "w2") return {d, f};
  throw RuntimeError("no linear map '" + name + "' in a block (wq, wk, wv, wo, w1, w2, w3)");
}

std::vector<std::pair<std::string, std::vector<int64_t>>> block_parameter_shapes(
    const ModelArgs& args) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  auto add_linear = [&](const std::string& module, const std::string& name) {
    const auto [out, in] = block_linear_shape(args, name);
    shapes.push_back({module + "." + name + ".weight", {out, in}});
  };
  for (const char* name : {"wq", "wk", "wv", "wo"}) add_linear("attention", name);
  for (const char* name : {"w1", "w2", "w3"}) add_linear("feed_forward", name);
  shapes.push_back({"attention_norm.weight", {args.dim}});
  shapes.push_back({"ffn_norm.weight", {args.dim}});
  return shapes;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelArgs& args) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  shapes.push_back({"tok_embeddings.weight", {args.vocab_size, args.dim}});
  const auto block = block_parameter_shapes(args);
  for (int64_t i = 0; i < args.n_layers; ++i) {
    for (const auto& [name, shape] : block) {
      shapes.push_back({"layers." + std::to_string(i) + "." + name, shape});
    }
  }
  shapes.push_back({"norm.weight", {args.dim}});
  if (!args.tie_embeddings) shapes.push_back({"output.weight", {args.vocab_size, args.dim}});
  return shapes;
}

// ---------------------------------------------------------------------------------------------
// Leaf modules

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features,
                       const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}, options));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return at::linear(x, weight); }

namespace {

// at::linear(x, w) (no bias) as autograd sees it, without computing the output. The compute
// dtype is autocast's for x's device when it is on (linear is on autocast's lower-precision list
// on CPU and CUDA), else x's; operands in another dtype are cast as autocast casts them. Backward
// makes the calls LibTorch's own backward of matmul (folded to mm) and of the casts makes, in
// the same layouts, so the gradients are the same bits.
struct GradientOnlyLinear : public torch::autograd::Function<GradientOnlyLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w) {
    const auto device = x.device().type();
    const auto compute =
        compat::autocast_enabled(device) ? compat::autocast_dtype(device) : x.scalar_type();
    const auto xc = x.scalar_type() == compute ? x : x.to(compute);
    const auto wc = w.scalar_type() == compute ? w : w.to(compute);
    // x's gradient needs the (cast) weight, the weight's needs the (cast) input.
    ctx->save_for_backward(
        {w.requires_grad() ? xc : at::Tensor(), x.requires_grad() ? wc : at::Tensor()});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    auto sizes = x.sizes().vec();
    sizes.back() = w.size(0);
    return at::zeros(sizes, x.options().dtype(compute));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& xc = saved[0];
    const at::Tensor& wc = saved[1];
    const auto x_dtype = static_cast<c10::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<c10::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const at::Tensor& g = grads[0];
    const auto g2 = g.reshape({-1, g.size(-1)});  // (N, out)
    at::Tensor gx, gw;
    if (wc.defined()) {  // x needs a gradient: (N, out) @ (out, in)
      auto in_sizes = g.sizes().vec();
      in_sizes.back() = wc.size(1);
      gx = g2.mm(wc).view(in_sizes);
      if (gx.scalar_type() != x_dtype) gx = gx.to(x_dtype);
    }
    if (xc.defined()) {  // the weight needs one: (out, N) @ (N, in)
      gw = g2.t().mm(xc.reshape({-1, xc.size(-1)}));
      if (gw.scalar_type() != w_dtype) gw = gw.to(w_dtype);
    }
    return {gx, gw};
  }
};

}  // namespace

torch::Tensor LinearImpl::forward_for_gradients(const torch::Tensor& x) {
  return GradientOnlyLinear::apply(x, weight);
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t dim,
                             const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({num_embeddings, dim}, options));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& tokens) {
  return at::embedding(weight, tokens);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const torch::TensorOptions& options)
    : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const bool fp32 = x.scalar_type() == torch::kFloat;
  const auto xf = fp32 ? x : x.to(torch::kFloat);
  // sum / dim, as mean computes it, but mean's autograd node in LibTorch 1.13 keeps its input
  // (x^2, one more activation the size of x per norm); sum's keeps only sizes.
  const auto mean_square = xf.pow(2).sum(/*dim=*/-1, /*keepdim=*/true) / static_cast<double>(xf.size(-1));
  const auto normed = xf * at::rsqrt(mean_square + eps);
  return (fp32 ? normed : normed.to(x.scalar_type())) * weight;
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings (Meta's interleaved pairs)

RopeTables make_rope_tables(int64_t head_dim, int64_t max_seq_len, double theta,
                            const torch::Device& device) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  // freqs[i] = theta^(-2i/hd), i in [0, hd/2)       (hd/2)
  const auto exponents = torch::arange(0, head_dim, 2, f32).slice(0, 0, head_dim / 2) / head_dim;
  const auto freqs = 1.0 / torch::pow(theta, exponents);
  const auto positions = torch::arange(max_seq_len, f32);  // (max_seq_len)
  const auto angles = torch::outer(positions, freqs);      // (max_seq_len, hd/2)
  RopeTables rope{angles.cos(), angles.sin(), {}, {}};
  rope.cos_pairs = torch::stack({rope.cos, rope.cos}, /*dim=*/-1).flatten(/*start_dim=*/-2);
  rope.sin_pairs = torch::stack({-rope.sin, rope.sin}, /*dim=*/-1).flatten(/*start_dim=*/-2);
  return rope;
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope, int64_t start) {
  const int64_t t = x.size(1);
  const int64_t hd = x.size(-1);
  TORCH_CHECK(start + t <= rope.cos.size(0), "position ", start + t,
              " is beyond the RoPE tables (max_seq_len ", rope.cos.size(0), ")");
  // Pair (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), written as x * cos_pairs +
  // swap(x) * sin_pairs with swap(x0, x1) = (x1, x0): the same products and sums as the complex
  // form (bitwise), in 5 kernels instead of 10; this runs twice per layer per decoded token.
  const auto cos = rope.cos_pairs.narrow(0, start, t).view({1, t, 1, hd});
  const auto sin = rope.sin_pairs.narrow(0, start, t).view({1, t, 1, hd});
  const auto xf = x.scalar_type() == torch::kFloat ? x : x.to(torch::kFloat);
  const auto swapped = xf.unflatten(/*dim=*/-1, {hd / 2, 2}).flip(-1).flatten(/*start_dim=*/-2);
  const auto out = at::addcmul(xf * cos, swapped, sin);
  return x.scalar_type() == torch::kFloat ? out : out.to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// KV cache

KVCache KVCache::allocate(const ModelArgs& args, int64_t batch, int64_t max_len,
                          const torch::TensorOptions& options) {
  KVCache cache;
  for (int64_t i = 0; i < args.n_layers; ++i) {
    cache.k.push_back(torch::zeros({batch, args.kv_heads(), max_len, args.head_dim()}, options));
    cache.v.push_back(torch::zeros({batch, args.kv_heads(), max_len, args.head_dim()}, options));
  }
  return cache;
}

// ---------------------------------------------------------------------------------------------
// Attention, feed-forward, block

namespace {

// Block linear map `name` (block_linear_shape), registered on `module` under that name.
std::shared_ptr<LinearImpl> register_linear(torch::nn::Module& module, const ModelArgs& args,
                                            const std::string& name,
                                            const torch::TensorOptions& options) {
  const auto [out, in] = block_linear_shape(args, name);
  return module.register_module(name, std::make_shared<LinearImpl>(in, out, options));
}

}  // namespace

AttentionImpl::AttentionImpl(const ModelArgs& args, const torch::TensorOptions& options)
    : n_heads(args.n_heads), n_kv_heads(args.kv_heads()), head_dim(args.head_dim()) {
  wq = register_linear(*this, args, "wq", options);  // (H*hd, D)
  wk = register_linear(*this, args, "wk", options);  // (KV*hd, D)
  wv = register_linear(*this, args, "wv", options);  // (KV*hd, D)
  wo = register_linear(*this, args, "wo", options);  // (D, H*hd)
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const RopeTables& rope, int64_t start,
                                     torch::Tensor* cache_k, torch::Tensor* cache_v) {
  const int64_t b = x.size(0);
  const int64_t t = x.size(1);
  auto q = wq->forward(x).view({b, t, n_heads, head_dim});     // (B, T, H, hd)
  auto k = wk->forward(x).view({b, t, n_kv_heads, head_dim});  // (B, T, KV, hd)
  auto v = wv->forward(x).view({b, t, n_kv_heads, head_dim});  // (B, T, KV, hd)
  q = apply_rope(q, rope, start);
  k = apply_rope(k, rope, start).transpose(1, 2);  // (B, KV, T, hd)
  v = v.transpose(1, 2);                           // (B, KV, T, hd)

  torch::Tensor keys = k;
  torch::Tensor values = v;
  if (cache_k != nullptr) {
    TORCH_CHECK(start + t <= cache_k->size(2), "KV cache holds ", cache_k->size(2),
                " positions; asked for ", start + t);
    cache_k->narrow(2, start, t).copy_(k);
    cache_v->narrow(2, start, t).copy_(v);
    keys = cache_k->narrow(2, 0, start + t);    // (B, KV, S, hd)
    values = cache_v->narrow(2, 0, start + t);  // (B, KV, S, hd)
  }
  // (B, H, T, hd) -> (B, T, H * hd): a view of the fused kernel's output, which it lays out so.
  const auto out = causal_attention(q.transpose(1, 2), keys, values);
  return wo->forward(out.transpose(1, 2).reshape({b, t, n_heads * head_dim}));
}

FeedForwardImpl::FeedForwardImpl(const ModelArgs& args, const torch::TensorOptions& options) {
  w1 = register_linear(*this, args, "w1", options);  // (F, D)
  w2 = register_linear(*this, args, "w2", options);  // (D, F)
  w3 = register_linear(*this, args, "w3", options);  // (F, D)
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x, bool output_values) {
  const auto gated = at::silu(w1->forward(x)) * w3->forward(x);  // (B, T, F)
  return output_values ? w2->forward(gated) : w2->forward_for_gradients(gated);
}

TransformerBlockImpl::TransformerBlockImpl(const ModelArgs& args,
                                           const torch::TensorOptions& options) {
  attention = register_module("attention", Attention(args, options));
  feed_forward = register_module("feed_forward", FeedForward(args, options));
  attention_norm = register_module("attention_norm", RMSNorm(args.dim, args.norm_eps, options));
  ffn_norm = register_module("ffn_norm", RMSNorm(args.dim, args.norm_eps, options));
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x, const RopeTables& rope,
                                            int64_t start, torch::Tensor* cache_k,
                                            torch::Tensor* cache_v) {
  return ffn_half(attention_half(x, rope, start, cache_k, cache_v));
}

torch::Tensor TransformerBlockImpl::attention_half(const torch::Tensor& x, const RopeTables& rope,
                                                   int64_t start, torch::Tensor* cache_k,
                                                   torch::Tensor* cache_v) {
  return x + attention->forward(attention_norm->forward(x), rope, start, cache_k, cache_v);
}

torch::Tensor TransformerBlockImpl::ffn_half(const torch::Tensor& h, bool output_values) {
  return h + feed_forward->forward(ffn_norm->forward(h), output_values);
}

// ---------------------------------------------------------------------------------------------
// Transformer

TransformerImpl::TransformerImpl(const ModelArgs& args, const torch::TensorOptions& options)
    : args_(args) {
  args_.validate("model args");
  tok_embeddings = register_module("tok_embeddings",
                                   Embedding(args.vocab_size, args.dim, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < args.n_layers; ++i) layers->push_back(TransformerBlock(args, options));
  norm = register_module("norm", RMSNorm(args.dim, args.norm_eps, options));
  if (!args.tie_embeddings) {
    output = register_module("output",
                             std::make_shared<LinearImpl>(args.dim, args.vocab_size, options));
  }
  rope_ = make_rope_tables(args.head_dim(), args.max_seq_len, args.rope_theta, options.device());
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens, KVCache* cache) {
  return logits(hidden(tokens, cache));  // (B, T, V)
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  return output ? output->forward(hidden) : at::linear(hidden, tok_embeddings->weight);
}

torch::Tensor TransformerImpl::hidden(const torch::Tensor& tokens, KVCache* cache) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be (B, T), got ", tokens.sizes());
  const int64_t start = cache != nullptr ? cache->length : 0;
  auto h = tok_embeddings->forward(tokens);  // (B, T, D)
  for (size_t i = 0; i < layers->size(); ++i) {
    torch::Tensor* k = cache != nullptr ? &cache->k.at(i) : nullptr;
    torch::Tensor* v = cache != nullptr ? &cache->v.at(i) : nullptr;
    h = block(i).forward(h, rope_, start, k, v);
  }
  if (cache != nullptr) cache->length += tokens.size(1);
  return norm->forward(h);  // (B, T, D)
}

void TransformerImpl::init_random(uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::optional<at::Generator> device_gen;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    auto& p = item.value();
    // Draw in fp32 so values do not depend on the dtype, and in place: straight into an fp32
    // parameter, else through one fp32 buffer (a 7B embedding table is 524 MB, and out-of-place
    // arithmetic held two such temporaries at load). On the CPU for CPU parameters; on the
    // device for CUDA ones, from a generator of that device seeded alike (other values than the
    // CPU's: drawing a 32-layer 7B model on the CPU would cost about 45 s).
    const bool on_device = !p.device().is_cpu();
    if (on_device && !device_gen) device_gen = seeded_generator(p.device(), seed);
    const bool direct = p.scalar_type() == torch::kFloat;
    auto values = direct ? p : at::empty(p.sizes(), p.options().dtype(torch::kFloat));
    draw_random_weight(values, on_device ? *device_gen : gen);
    if (!direct) p.copy_(values);
  }
}

void draw_random_weight(torch::Tensor& values, at::Generator& generator) {
  TORCH_CHECK(values.scalar_type() == torch::kFloat, "draw_random_weight: fp32 values, got ",
              values.scalar_type());
  values.normal_(0.0, 1.0, generator);
  if (values.dim() == 1) {
    values.mul_(0.1).add_(1.0);
  } else {
    values.mul_(0.02);
  }
}

}  // namespace llt
