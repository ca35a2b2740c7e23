// The library's option structs (sampling, LoRA, optimizer, recomputation, data parallelism), which
// the tools' structs (llt/tools/options.h) compose. One spelling per concept: the field
// `n_layers` is the flag `--n-layers`, the TOML key `n-layers` and the JSON key `n_layers`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llt {

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
  std::string lr_schedule = "constant";  // --lr-schedule: constant | cosine | linear
  int64_t warmup_steps = 0;              // --warmup-steps: linear ramp up to lr over these steps
  double weight_decay = 0;               // --weight-decay: decoupled (AdamW); never on 1-D params
  double grad_clip = 0;                  // --grad-clip: max global L2 norm of gradients; 0 = off
  double beta1 = 0.9;                    // AdamW moments and epsilon: PyTorch's defaults
  double beta2 = 0.999;
  double eps = 1e-8;
};

// Activation checkpointing (lib/llt/recompute).
struct RecomputeOptions {
  std::string grad_checkpoint = "none";  // --grad-checkpoint: none | block | every-k | ffn
  int64_t grad_checkpoint_every = 2;     // --grad-checkpoint-every: every-k checkpoints 0, K, 2K..
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
  double bucket_mb = 25;   // --dist-bucket-mb: MiB per gradient all-reduce (PyTorch DDP's 25)
};

}  // namespace llt
