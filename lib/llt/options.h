// The library's option structs (sampling, LoRA, optimizer, recomputation, data parallelism), which
// the tools' structs (llt/tools/options.h) compose. One spelling per concept: the field
// `n_layers` is the flag `--n-layers`, the TOML key `n-layers` and the JSON key `n_layers`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llt/names.h"

namespace llt {

// A floating-point storage or compute type: --dtype, --base-dtype, --precision.
enum class Dtype { kFp32, kBf16, kFp16 };
inline const NameTable<Dtype>& names(Dtype) {
  static const NameTable<Dtype> table{
      {"fp32", Dtype::kFp32}, {"bf16", Dtype::kBf16}, {"fp16", Dtype::kFp16}};
  return table;
}

// The learning rate over the steps after warmup (lib/llt/optim).
enum class LrSchedule { kConstant, kCosine, kLinear };
inline const NameTable<LrSchedule>& names(LrSchedule) {
  static const NameTable<LrSchedule> table{{"constant", LrSchedule::kConstant},
                                           {"cosine", LrSchedule::kCosine},
                                           {"linear", LrSchedule::kLinear}};
  return table;
}

// Which activations are recomputed in backward instead of kept (lib/llt/recompute): none; every
// block's; blocks 0, K, 2K...; the feed-forward half of every block.
enum class RecomputePolicy { kNone, kBlock, kEveryK, kFfn };
inline const NameTable<RecomputePolicy>& names(RecomputePolicy) {
  static const NameTable<RecomputePolicy> table{{"none", RecomputePolicy::kNone},
                                                {"block", RecomputePolicy::kBlock},
                                                {"every-k", RecomputePolicy::kEveryK},
                                                {"ffn", RecomputePolicy::kFfn}};
  return table;
}

// What a micro-batch's loss is divided by: the window's label tokens (every label token weighs
// the same), or the micro-batch's own label tokens times the window's micro-batches (the seed's
// mean per micro-batch, averaged).
enum class LossNormalization { kTokens, kMicroBatch };
inline const NameTable<LossNormalization>& names(LossNormalization) {
  static const NameTable<LossNormalization> table{{"tokens", LossNormalization::kTokens},
                                                  {"micro-batch", LossNormalization::kMicroBatch}};
  return table;
}

// The positions a perplexity scores: the response (label) tokens, or every token after the first.
enum class ScoredTokens { kLabels, kAll };
inline const NameTable<ScoredTokens>& names(ScoredTokens) {
  static const NameTable<ScoredTokens> table{{"labels", ScoredTokens::kLabels},
                                             {"all", ScoredTokens::kAll}};
  return table;
}

// What llt-export writes: a Hugging Face transformers folder, or Meta's consolidated layout.
enum class ExportFormat { kHuggingFace, kMeta };
inline const NameTable<ExportFormat>& names(ExportFormat) {
  static const NameTable<ExportFormat> table{{"hf", ExportFormat::kHuggingFace},
                                             {"meta", ExportFormat::kMeta}};
  return table;
}

// How the next token is chosen.
struct SamplingOptions {
  double temperature = 0.0;      // 0 = greedy (argmax); > 0 scales logits before softmax
  int64_t top_k = 0;             // keep the k most likely tokens; 0 = off
  double top_p = 1.0;            // nucleus: smallest set with cumulative probability >= p; 1 = off
  uint64_t seed = 0;             // seeds the sampler's generator (unused when greedy)
  int64_t max_new_tokens = 128;  // generated tokens per prompt, at most
};

// LoRA adapters (lib/llt/lora). Defaults from the project brief (DESIGN.md "Training numerics").
struct LoraOptions {
  int64_t rank = 16;      // --lora-rank: r, the adapter's inner size; 0 = full fine-tuning
  double alpha = 32;      // --lora-alpha: the adapter output is scaled by alpha / r
  double dropout = 0.05;  // --lora-dropout: dropout on the adapter input, training only
  std::vector<std::string> targets = {"wq", "wv"};  // --lora-targets: of wq wk wv wo w1 w2 w3
};

// AdamW and its learning-rate schedule (lib/llt/optim).
struct OptimOptions {
  double lr = 1e-5;                      // --lr: peak learning rate (the brief's 1e-5)
  LrSchedule lr_schedule = LrSchedule::kConstant;  // --lr-schedule: constant | cosine | linear
  int64_t warmup_steps = 0;              // --warmup-steps: linear ramp up to lr over these steps
  double weight_decay = 0;               // --weight-decay: decoupled (AdamW); never on 1-D params
  double grad_clip = 0;                  // --grad-clip: max global L2 norm of gradients; 0 = off
  double beta1 = 0.9;                    // AdamW moments and epsilon: PyTorch's defaults
  double beta2 = 0.999;
  double eps = 1e-8;
};

// Activation recomputation, the field's "gradient checkpointing" (lib/llt/recompute).
struct RecomputeOptions {
  RecomputePolicy policy = RecomputePolicy::kNone;  // --grad-checkpoint: none | block | every-k | ffn
  int64_t every = 2;  // --grad-checkpoint-every: every-k recomputes blocks 0, K, 2K...
};

// Data parallelism (lib/llt/distributed; its header says which environment variables fill what
// the flags leave unset: srun's SLURM_*, torchrun's WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT).
struct DistributedOptions {
  int64_t world_size = 0;  // --world-size: processes in the run; 0 = from the environment, else 1
  int64_t rank = -1;       // --rank: this process, 0..world-size-1; -1 = from RANK / SLURM_PROCID
  std::string init;        // --dist-init: file:///SHARED/PATH | tcp://HOST:PORT; "" = from env
  int64_t port = 0;        // --dist-port: port of a rendezvous derived from the environment;
                           //   0 = MASTER_PORT, else 16384 + SLURM_JOB_ID % 16384, else 29500
  double timeout = 600;    // --dist-timeout: seconds to wait for the others (rendezvous or a
                           //   collective) before failing; NCCL's own default, 10 minutes
  double bucket_mib = 25;  // --dist-bucket-mib: MiB per gradient all-reduce (PyTorch DDP's 25)
};

}  // namespace llt
