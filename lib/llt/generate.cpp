#include "llt/generate.h"

#include <algorithm>
#include <chrono>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "llt/errors.h"
#include "llt/runtime.h"

namespace llt {
namespace {

// Meta's sample_top_p: keep the smallest prefix of the sorted distribution whose mass reaches p.
at::Tensor top_p_filter(const at::Tensor& probs, double p) {
  const auto [sorted, order] = probs.sort(/*dim=*/-1, /*descending=*/true);
  const auto cumulative = sorted.cumsum(/*dim=*/-1);
  // A token is dropped when the mass before it already reaches p.
  const auto dropped = (cumulative - sorted) > p;
  const auto kept = sorted.masked_fill(dropped, 0.0);
  return at::zeros_like(probs).scatter(/*dim=*/-1, order, kept);
}

at::Tensor top_k_filter(const at::Tensor& logits, int64_t k) {
  if (k <= 0 || k >= logits.size(-1)) return logits;
  const auto kth = std::get<0>(logits.topk(k, /*dim=*/-1)).select(-1, k - 1).unsqueeze(-1);
  return logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
}

}  // namespace

at::Tensor sample_next(const at::Tensor& logits, const SamplingOptions& options,
                       at::Generator& generator) {
  if (options.temperature <= 0) return logits.argmax(/*dim=*/-1);
  auto scaled = top_k_filter(logits / options.temperature, options.top_k);
  auto probs = at::softmax(scaled, /*dim=*/-1);
  if (options.top_p < 1.0) probs = top_p_filter(probs, options.top_p);
  // multinomial renormalises; draw on the CPU generator for reproducibility across devices.
  return at::multinomial(probs.cpu(), /*num_samples=*/1, /*replacement=*/false, generator)
      .squeeze(-1)
      .to(logits.device());
}

GenerateResult generate(TransformerImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options) {
  // InferenceMode, not just NoGradGuard: it also skips version counters and view tracking, a
  // measurable share of the per-op cost when decoding a small model one token at a time.
  c10::InferenceMode inference;
  const auto started = std::chrono::steady_clock::now();
  GenerateResult result;
  const int64_t batch = static_cast<int64_t>(prompts.size());
  if (batch == 0) return result;
  const int64_t max_seq_len = model.args().max_seq_len;
  size_t min_len = prompts.front().size();
  size_t max_len = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      throw InputError("prompt " + std::to_string(i) + " has no tokens (add BOS or text)");
    }
    if (static_cast<int64_t>(prompts[i].size()) >= max_seq_len) {
      throw InputError("prompt " + std::to_string(i) + " has " +
                       std::to_string(prompts[i].size()) + " tokens; the model's max_seq_len is " +
                       std::to_string(max_seq_len));
    }
    min_len = std::min(min_len, prompts[i].size());
    max_len = std::max(max_len, prompts[i].size());
  }
  const int64_t max_new = options.sampling.max_new_tokens;
  if (max_new <= 0) {
    for (int64_t b = 0; b < batch; ++b) result.sequences.push_back({prompts[b], {}, false});
    return result;
  }
  const int64_t total_len = std::min<int64_t>(max_seq_len, static_cast<int64_t>(max_len) + max_new);

  // tokens (B, total_len) on the CPU: prompts written in, the rest filled as we go.
  auto tokens = at::zeros({batch, total_len}, at::kLong);
  auto acc = tokens.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    for (size_t t = 0; t < prompts[b].size(); ++t) acc[b][t] = prompts[b][t];
  }

  const auto device = model.tok_embeddings->weight.device();
  const auto dtype = model.tok_embeddings->weight.scalar_type();
  KVCache cache;
  if (options.kv_cache) {
    cache = KVCache::allocate(model.args(), batch, total_len,
                              at::TensorOptions().dtype(dtype).device(device));
  }
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.sampling.seed);

  result.sequences.resize(batch);
  std::vector<bool> done(batch, false);
  int64_t prev = 0;
  for (int64_t cur = static_cast<int64_t>(min_len); cur < total_len; ++cur) {
    at::Tensor logits;  // (B, V) at position cur-1
    if (options.kv_cache) {
      logits = model.forward(tokens.slice(1, prev, cur).to(device), &cache).select(1, -1);
    } else {
      logits = model.forward(tokens.slice(1, 0, cur).to(device)).select(1, -1);
    }
    ++result.forward_calls;
    // NaN logits would still give ids (argmax of NaN), so garbage would pass for text.
    if (!at::isfinite(logits).all().item<bool>()) {
      throw NonFiniteError("non-finite logits (NaN/inf) at position " + std::to_string(cur - 1) +
                           ": " + non_finite_causes(dtype));
    }
    const auto next = sample_next(logits.to(at::kFloat), options.sampling, generator).cpu();
    const auto next_acc = next.accessor<int64_t, 1>();
    bool all_done = true;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t prompt_len = static_cast<int64_t>(prompts[b].size());
      if (cur < prompt_len) {  // still inside this prompt: keep its own token
        all_done = false;
        continue;
      }
      if (done[b]) continue;
      const int64_t id = next_acc[b];
      acc[b][cur] = id;
      auto& seq = result.sequences[b];
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), id) !=
          options.stop_ids.end()) {
        seq.stopped = true;
        done[b] = true;
      } else {
        seq.ids.push_back(id);
        done[b] = static_cast<int64_t>(seq.ids.size()) >= max_new;
      }
      all_done = all_done && done[b];
    }
    prev = cur;
    if (all_done) break;
  }
  for (int64_t b = 0; b < batch; ++b) result.sequences[b].prompt_ids = prompts[b];
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace llt
