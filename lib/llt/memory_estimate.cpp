#include "llt/memory_estimate.h"

#include <algorithm>
#include <initializer_list>
#include <string>

#include <c10/util/accumulate.h>

#include "llt/errors.h"
#include "llt/lora.h"
#include "llt/recompute.h"

namespace llt {
namespace {

// ---------------------------------------------------------------------------------------------
// Activations

struct Sizes {
  double n;         // tokens per micro-batch, B * T
  double d, kvd;    // D, KV * hd
  double f;         // FFN size F
  double heads_t2;  // B * H * T * T: attention probabilities
  double heads_t;   // B * H * T: the fused kernel's row log-sum-exp
  bool scores;      // attention keeps its probabilities for backward (reference kernel)
  double c;         // bytes of the compute dtype
  bool autocast;    // compute dtype below fp32: linear inputs are cast copies
  bool full;        // full fine-tuning: base weights need their inputs saved
};

// Bytes a LoRA adapter on a linear map with `in` inputs saves: the dropout mask (fp32) and the
// dropped input (in the compute dtype) or, without dropout, the input; A's output for B.
double lora_adapter_bytes(const Sizes& s, double in, const LoraOptions& lora) {
  const double input = lora.dropout > 0 ? s.n * in * (4 + s.c) : s.n * in * s.c;
  return input + s.n * static_cast<double>(lora.rank) * s.c;
}

double lora_targets_bytes(const Sizes& s, const LoraOptions& lora, bool attention) {
  if (s.full) return 0;
  double bytes = 0;
  for (const auto& t : lora.targets) {
    const bool in_attention = t == "wq" || t == "wk" || t == "wv" || t == "wo";
    if (in_attention != attention) continue;
    const double in = t == "w2" ? s.f : s.d;  // wo's input is H * hd = D
    bytes += lora_adapter_bytes(s, in, lora);
  }
  return bytes;
}

// RMSNorm in fp32: its input (and rsqrt) always. When its weight trains, also the normalised
// input (for the weight's gradient) and, without autocast, its output, which the trainable
// linears after it save (under autocast they save cast copies, counted with them).
double norm_bytes(const Sizes& s) {
  const double tensors = s.full ? (s.autocast ? 2 : 3) : 1;
  return s.n * s.d * 4 * tensors + s.n * 4;
}

// attention_norm .. wo (the part `ffn` checkpointing keeps).
double attention_bytes(const Sizes& s, const LoraOptions& lora) {
  double bytes = norm_bytes(s);
  const double casts = s.full && s.autocast ? 3 * s.n * s.d * s.c : 0;  // wq/wk/wv inputs, cast
  if (s.scores) {
    bytes += (s.n * s.d + s.n * s.kvd) * s.c;            // q and k for the scores matmul
    bytes += s.heads_t2 * (4 + (s.autocast ? s.c : 0));  // fp32 softmax output (+ its cast)
    bytes += s.n * s.kvd * s.c;                          // v for probs @ v
    if (s.full) bytes += casts + s.n * s.d * s.c;        // wo's input
  } else {
    // Fused kernel: q, k, v, its output (also wo's input) and the row log-sum-exp.
    bytes += (2 * s.n * s.d + 2 * s.n * s.kvd) * s.c + s.heads_t * 4 + casts;
  }
  return bytes + lora_targets_bytes(s, lora, /*attention=*/true);
}

// ffn_norm .. w2.
double ffn_bytes(const Sizes& s, const LoraOptions& lora) {
  double bytes = norm_bytes(s);
  bytes += 3 * s.n * s.f * s.c;  // silu input and output, w3 output
  if (s.full) bytes += s.n * s.f * s.c + (s.autocast ? 2 * s.n * s.d * s.c : 0);  // w2 in, casts
  return bytes + lora_targets_bytes(s, lora, /*attention=*/false);
}

int64_t dtype_bytes(c10::ScalarType t) {
  return static_cast<int64_t>(c10::elementSize(t));
}

// Elements of the largest trainable parameter: an adapter matrix for LoRA, else the largest
// weight (the embedding table or output projection, an FFN or an attention matrix).
int64_t largest_trainable_parameter(const ModelArgs& args, const LoraOptions& lora) {
  int64_t largest = 0;
  if (lora.rank == 0) {
    for (const auto& [name, shape] : parameter_shapes(args)) {
      largest = std::max(largest, c10::multiply_integers(shape));
    }
    return largest;
  }
  for (const auto& name : lora.targets) {  // A (r, in) and B (out, r)
    const auto [out, in] = block_linear_shape(args, name);
    largest = std::max(largest, lora.rank * std::max(out, in));
  }
  return largest;
}

// Elements of the block's linear maps `names` (weights a cast copies under autocast).
double linear_elements(const ModelArgs& args, std::initializer_list<const char*> names) {
  int64_t elements = 0;
  for (const char* name : names) {
    const auto [out, in] = block_linear_shape(args, name);
    elements += out * in;
  }
  return static_cast<double>(elements);
}

}  // namespace

MemoryBreakdown estimate_training_memory(const ModelArgs& args, const MemoryEstimateOptions& o) {
  if (o.batch < 1 || o.seq_len < 1) {
    throw InputError("memory estimate: batch " + std::to_string(o.batch) + " and seq_len " +
                     std::to_string(o.seq_len) + " must be >= 1");
  }
  validate_recompute_options(o.recompute);
  const bool full = o.lora.rank == 0;
  const int64_t total_params = args.num_parameters();
  const int64_t trainable = full ? total_params : count_lora_parameters(args, o.lora);

  MemoryBreakdown m;
  m.parameters = full ? total_params * 4 : total_params * dtype_bytes(o.base_dtype) + trainable * 4;
  m.gradients = trainable * 4;
  m.optimizer_state = trainable * 8;
  // torch::optim::AdamW computes denom = (exp_avg_sq.sqrt() / c).add_(eps): two fp32 temporaries
  // the size of the parameter, alive together (the +13% seen on full fp32 fine-tuning).
  m.optimizer_temporaries = 2 * 4 * largest_trainable_parameter(args, o.lora);

  const double b = static_cast<double>(o.batch), t = static_cast<double>(o.seq_len);
  Sizes s;
  s.n = b * t;
  s.d = static_cast<double>(args.dim);
  s.kvd = static_cast<double>(args.kv_heads() * args.head_dim());
  s.f = static_cast<double>(args.ffn_hidden());
  s.heads_t2 = b * static_cast<double>(args.n_heads) * t * t;
  s.heads_t = b * static_cast<double>(args.n_heads) * t;
  s.scores = o.attention_saves_scores;
  s.autocast = o.precision != Dtype::kFp32;
  s.c = s.autocast ? 2 : 4;
  s.full = full;

  const double attention = attention_bytes(s, o.lora), ffn = ffn_bytes(s, o.lora);
  const double block_input = s.n * s.d * 4;  // what a checkpoint keeps: the fp32 residual
  const auto policy = o.recompute.policy;
  // Under autocast, a linear whose weight is stored in another dtype than the compute dtype (all
  // of them in full fine-tuning: fp32 masters; the frozen base in LoRA unless --base-dtype is the
  // compute dtype) casts it each forward, and backward keeps the cast copy to compute the input's
  // gradient. Checkpointed blocks keep none (their forward runs without autograd) and remake them
  // in backward. Measured on the 7B shape: 659 MB of 661 MB activations for bf16 LoRA, fp32 base.
  const c10::ScalarType compute = o.precision == Dtype::kFp16 ? c10::kHalf : c10::kBFloat16;
  const bool casts = s.autocast && (full || o.base_dtype != compute);
  const double attention_w = casts ? linear_elements(args, {"wq", "wk", "wv", "wo"}) * s.c : 0;
  const double ffn_w = casts ? linear_elements(args, {"w1", "w2", "w3"}) * s.c : 0;
  double blocks = 0;
  for (int64_t i = 0; i < args.n_layers; ++i) {
    const bool whole =
        policy == RecomputePolicy::kBlock ||
        (policy == RecomputePolicy::kEveryK && i % o.recompute.every == 0);
    if (whole) {
      blocks += block_input;
    } else if (policy == RecomputePolicy::kFfn) {
      blocks += attention + attention_w + block_input;
    } else {
      blocks += attention + attention_w + ffn + ffn_w;
    }
  }
  // LoRA's first block (kept or recomputed): its input (the frozen embedding's output) needs no
  // gradient, and neither does attention_norm's output, so that norm saves nothing, wq/wk/wv
  // keep no cast weight copy, and their adapters' dropout keeps no mask (only the dropped input,
  // for A's gradient).
  double first_block_spared =
      norm_bytes(s) + (casts ? linear_elements(args, {"wq", "wk", "wv"}) * s.c : 0);
  for (const auto& t : o.lora.targets) {
    const bool reads_norm = t == "wq" || t == "wk" || t == "wv";
    if (o.lora.dropout > 0 && reads_norm) first_block_spared += s.n * s.d * 4;
  }
  const bool first_whole = policy == RecomputePolicy::kBlock || policy == RecomputePolicy::kEveryK;
  if (!full && args.n_layers > 0 && !first_whole) blocks -= first_block_spared;
  // Head (lib/llt/loss): the final norm's saved tensors (its output is not among them: the
  // projection takes a gathered copy of the scored rows, which it saves when it trains), and the
  // fp32 log-probs of the scored rows, which cross-entropy keeps (the logits are gone by then).
  const double vocab = static_cast<double>(args.vocab_size);
  const double rows = o.loss_rows > 0 ? static_cast<double>(o.loss_rows) : s.n;
  const double head = s.n * s.d * 4 * (full ? 2 : 1) + s.n * 4 +
                      (full ? rows * s.d * (s.autocast ? s.c : 4) : 0) + rows * vocab * 4;
  const double head_w = casts ? vocab * s.d * s.c : 0;  // the output projection's cast copy
  m.activations = static_cast<int64_t>(blocks + head + head_w);
  m.head_activations = static_cast<int64_t>(head + head_w);
  m.block_backward = static_cast<int64_t>(3 * s.n * s.f * s.c + 2 * s.n * s.d * 4);
  // Cross-entropy's backward: the gradient of the log-probs and that of the logits, both fp32,
  // alive together before log-softmax's saved output is freed.
  m.loss_backward = static_cast<int64_t>(2 * rows * vocab * 4);
  if (policy == RecomputePolicy::kBlock || policy == RecomputePolicy::kEveryK) {
    m.recompute = static_cast<int64_t>(attention + attention_w + ffn + ffn_w);
    // Only block 0 recomputed (a 1-layer model, or every-k with K >= n_layers): with LoRA it
    // spares what its gradient-free input spares (above).
    const bool only_first =
        args.n_layers <=
        (policy == RecomputePolicy::kBlock ? 1 : o.recompute.every);
    if (!full && only_first) m.recompute -= static_cast<int64_t>(first_block_spared);
  } else if (policy == RecomputePolicy::kFfn) {
    m.recompute = static_cast<int64_t>(ffn + ffn_w);
  }
  return m;
}

}  // namespace llt
