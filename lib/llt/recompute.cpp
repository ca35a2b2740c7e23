#include "llt/recompute.h"

#include <mutex>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "llt/amp.h"
#include "llt/errors.h"

namespace llt {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Generator states at the start of a checkpointed forward.
struct RngState {
  at::Tensor cpu;
  at::Tensor cuda;  // of `device`, when the input is on CUDA
  c10::Device device{c10::kCPU};
};

at::Tensor generator_state(const c10::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(const c10::Device& device, const at::Tensor& state) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

RngState capture_rng(const c10::Device& device) {
  RngState s;
  s.device = device;
  s.cpu = generator_state(c10::Device(c10::kCPU));
  if (device.is_cuda()) s.cuda = generator_state(device);
  return s;
}

void restore_rng(const RngState& s) {
  set_generator_state(c10::Device(c10::kCPU), s.cpu);
  if (s.cuda.defined()) set_generator_state(s.device, s.cuda);
}

// Puts the forward's generator states back for the recomputation and, when it ends, the states
// backward found, so the random stream after backward is the same as without checkpointing.
class RngReplay {
 public:
  explicit RngReplay(const RngState& forward) : current_(capture_rng(forward.device)) {
    restore_rng(forward);
  }
  ~RngReplay() { restore_rng(current_); }
  RngReplay(const RngReplay&) = delete;
  RngReplay& operator=(const RngReplay&) = delete;

 private:
  RngState current_;
};

// Autocast keeps low-precision copies of trainable weights for reuse within its scope. A copy
// made under no-grad (the checkpointed forward) has no autograd history, and a later use of it
// would drop that weight's gradient: keep the cache off while checkpointed code runs.
class AutocastCacheOff {
 public:
  AutocastCacheOff() : previous_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(previous_); }
  AutocastCacheOff(const AutocastCacheOff&) = delete;
  AutocastCacheOff& operator=(const AutocastCacheOff&) = delete;

 private:
  bool previous_;
};

// What backward needs to run the function again; held by the autograd node as a capsule.
struct Recompute : torch::CustomClassHolder {
  RecomputedFn fn;
  RecomputedFn for_gradients;  // what backward runs: fn's graph, output values not needed
  std::vector<at::Tensor> params;
  RngState rng;
  AutocastState autocast;
};

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  // Runs under no-grad (Function::apply): nothing inside fn is saved for backward.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const c10::intrusive_ptr<Recompute>& run, at::TensorList /*params*/) {
    run->rng = capture_rng(x.device());
    run->autocast = current_autocast_state();
    ctx->save_for_backward({x});
    ctx->saved_data["run"] = at::IValue::make_capsule(run);
    AutocastCacheOff cache_off;
    return run->fn(x);
  }

  // Gradients for (x, run, params...): run is not a tensor and gets an undefined one.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto holder = ctx->saved_data["run"].toCapsule();
    const auto& run = static_cast<const Recompute&>(*holder);
    const at::Tensor x = ctx->get_saved_variables().at(0);
    at::Tensor input = x.detach();
    input.set_requires_grad(x.requires_grad());
    at::Tensor output;
    {
      RngReplay replay(run.rng);
      AutocastGuard autocast(run.autocast);
      AutocastCacheOff cache_off;
      at::AutoGradMode grad_mode(true);
      output = run.for_gradients(input);  // only its graph is used
    }
    variable_list wrt;
    if (input.requires_grad()) wrt.push_back(input);
    wrt.insert(wrt.end(), run.params.begin(), run.params.end());
    const variable_list grads = torch::autograd::grad({output}, wrt, {grad_outputs.at(0)},
                                                      /*retain_graph=*/false,
                                                      /*create_graph=*/false,
                                                      /*allow_unused=*/true);
    variable_list result;
    size_t next = 0;
    result.push_back(input.requires_grad() ? grads.at(next++) : at::Tensor());
    result.push_back(at::Tensor());  // run
    while (next < grads.size()) result.push_back(grads.at(next++));
    return result;
  }
};

// The parameters of `module` that require grad, in registration order.
std::vector<at::Tensor> trainable(const torch::nn::Module& module) {
  std::vector<at::Tensor> params;
  for (const auto& p : module.parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  return params;
}

// Recomputing a block in backward need not compute w2's output: it feeds only the residual sum
// that is the block's output, whose value backward never reads (ffn_half(h, false)). That is a
// ninth of a 7B block's matmul work in every recomputation.
at::Tensor checkpointed_block(const std::shared_ptr<TransformerBlockImpl>& block,
                              const RopeTables& rope, const at::Tensor& x) {
  return checkpoint(
      [block, rope](const at::Tensor& h) { return block->forward(h, rope, 0, nullptr, nullptr); },
      x, trainable(*block),
      [block, rope](const at::Tensor& h) {
        return block->ffn_half(block->attention_half(h, rope, 0, nullptr, nullptr),
                               /*output_values=*/false);
      });
}

// TransformerBlockImpl::forward with its feed-forward half checkpointed.
at::Tensor block_with_checkpointed_ffn(const std::shared_ptr<TransformerBlockImpl>& block,
                                       const RopeTables& rope, const at::Tensor& x) {
  const at::Tensor h = block->attention_half(x, rope, 0, nullptr, nullptr);
  std::vector<at::Tensor> params = trainable(*block->feed_forward);
  for (const auto& p : trainable(*block->ffn_norm)) params.push_back(p);
  return checkpoint([block](const at::Tensor& h) { return block->ffn_half(h); }, h, params,
                    [block](const at::Tensor& h) { return block->ffn_half(h, false); });
}

}  // namespace

void validate_recompute_options(const RecomputeOptions& options) {
  if (options.every < 1) {
    throw InputError("--grad-checkpoint-every: must be >= 1, got " +
                     std::to_string(options.every));
  }
}

at::Tensor checkpoint(RecomputedFn fn, const at::Tensor& x, const std::vector<at::Tensor>& params,
                      RecomputedFn for_gradients) {
  bool needs_grad = x.requires_grad();
  for (const auto& p : params) needs_grad = needs_grad || p.requires_grad();
  if (!at::GradMode::is_enabled() || !needs_grad) return fn(x);  // nothing to save anyway
  auto run = c10::make_intrusive<Recompute>();
  run->for_gradients = for_gradients ? std::move(for_gradients) : fn;
  run->fn = std::move(fn);
  run->params = params;
  return CheckpointFunction::apply(x, run, at::TensorList(params));
}

at::Tensor forward_with_checkpointing(TransformerImpl& model, const at::Tensor& tokens,
                                      const RecomputeOptions& options) {
  return model.logits(hidden_with_checkpointing(model, tokens, options));  // (B, T, V)
}

at::Tensor hidden_with_checkpointing(TransformerImpl& model, const at::Tensor& tokens,
                                     const RecomputeOptions& options) {
  validate_recompute_options(options);
  const RecomputePolicy policy = options.policy;
  if (policy == RecomputePolicy::kNone) return model.hidden(tokens);
  TORCH_CHECK(tokens.dim() == 2, "tokens must be (B, T), got ", tokens.sizes());

  // TransformerImpl::forward without a cache (start 0), block by block.
  const RopeTables& rope = model.rope();
  at::Tensor h = model.tok_embeddings->forward(tokens);  // (B, T, D)
  for (size_t i = 0; i < model.layers->size(); ++i) {
    const auto block = model.layers->ptr<TransformerBlockImpl>(i);
    const bool every_k_hit = i % static_cast<size_t>(options.every) == 0;
    if (policy == RecomputePolicy::kBlock || (policy == RecomputePolicy::kEveryK && every_k_hit)) {
      h = checkpointed_block(block, rope, h);
    } else if (policy == RecomputePolicy::kFfn) {
      h = block_with_checkpointed_ffn(block, rope, h);
    } else {
      h = block->forward(h, rope, 0, nullptr, nullptr);
    }
  }
  return model.norm->forward(h);  // (B, T, D)
}

}  // namespace llt
