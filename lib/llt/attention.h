// Causal scaled-dot-product attention with grouped-query heads: the one place the model's
// attention is computed (training, perplexity, generation with and without the KV cache).
//
// Kernels (causal_attention picks one by device; LLT_ATTENTION=reference|fused overrides it for
// A/B runs and tests):
//  - fused (CPU): FlashAttention-2's algorithm, one query row at a time: scores, causal softmax
//    and the weighted sum of values in one pass, never building the (H, T, S) score matrix.
//    Backward recomputes each row's probabilities from its saved log-sum-exp. Saved for
//    backward: q, k, v, the output and H * T floats, where the reference saves two (H, T, S)
//    matrices. Internally fp32 whatever the input dtype (as the reference's fp32 softmax).
//  - sdpa (CUDA, LibTorch >= 2.0, no cache offset): at::scaled_dot_product_attention.
//  - reference: matmul, additive causal mask, fp32 softmax, matmul (Meta's model.py).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace llt {

enum class AttentionKernel { kFused, kSdpa, kReference };

std::string attention_kernel_name(AttentionKernel kernel);

// q (B, H, T, hd); k, v (B, KV, S, hd) with KV dividing H and S >= T. Query row i sits at
// position S - T + i and attends keys 0 .. S - T + i (S > T: a KV-cache continuation). Query head
// h reads kv head h / (H / KV). Returns (B, H, T, hd) in q's dtype, differentiable in q, k, v.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Causal mask for T new queries at positions [start, start+T) over S = start+T keys: 0 where a
// query may attend, -inf elsewhere; (T, S) fp32. The reference kernel adds it to the scores.
at::Tensor causal_mask(int64_t t, int64_t start, const c10::Device& device);

// The kernel causal_attention uses for these inputs: LLT_ATTENTION if set, else fused on CPU,
// sdpa on CUDA where LibTorch has it and S == T, else reference.
AttentionKernel attention_kernel_for(const c10::Device& device, bool cache_offset);

// Whether the kernel for `device` keeps (H, T, S) probabilities for backward (the memory
// estimate counts them only then).
bool attention_saves_scores(const c10::Device& device);

// The kernels themselves (tests compare them). causal_attention_fused runs on CPU tensors only.
at::Tensor causal_attention_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
at::Tensor causal_attention_reference(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v);

// The fused kernel's forward without autograd: (output (B, T, H, hd) in q's dtype, log-sum-exp
// (B, H, T) fp32). Exposed for tests of the saved statistics.
std::pair<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v);

}  // namespace llt
