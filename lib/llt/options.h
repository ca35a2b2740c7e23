// Option structs shared by the tools. One spelling per concept: the field `n_layers` is the flag
// `--n-layers`, the TOML key `n-layers` and the JSON key `n_layers`. Only cli.cpp knows CLI11.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llt/generate.h"

namespace llt {

// Which model to run, where and how.
struct ModelOptions {
  std::string model;            // --model: checkpoint file or directory (format from content)
  std::string tokenizer;        // --tokenizer: SentencePiece .model; default: tokenizer.model beside the model
  std::string device = "auto";  // --device: auto | cpu | cuda[:N]
  std::string dtype = "fp32";   // --dtype: compute dtype fp32 | bf16 | fp16 (fp16 needs CUDA)
  int threads = 0;              // --threads: 0 = SLURM_CPUS_PER_TASK, else all cores
  int64_t n_layers = 0;         // --n-layers: keep only the first N blocks (1 = the P100 debug model)
};

// llt-generate.
struct GenerateToolOptions {
  ModelOptions model;
  SamplingOptions sampling;
  std::vector<std::string> prompts;  // --prompt (repeatable)
  std::string prompts_file;          // --prompts-file: text, one prompt a line, or JSONL records
  std::string template_name = "none";  // --template: none | alpaca
  std::string kv_cache = "on";       // --kv-cache: on | off
  bool bos = true;                   // --bos: prepend BOS to each prompt (as Meta and llama2.c do)
  int64_t batch_size = 8;            // --batch-size: prompts decoded together
  std::string output;                // --output: JSONL file, one record per prompt
  bool overwrite = false;            // --overwrite: replace an existing --output file
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
  double lr = 1e-5;                    // --lr: peak learning rate (the brief's 1e-5)
  std::string lr_schedule = "constant";  // --lr-schedule: constant | cosine | linear
  int64_t warmup_steps = 0;            // --warmup-steps: linear ramp up to lr over these steps
  double weight_decay = 0;             // --weight-decay: decoupled (AdamW); never on 1-D params
  double grad_clip = 0;                // --grad-clip: max global L2 norm of the gradients; 0 = off
  double beta1 = 0.9;                  // Adam moments (PyTorch's defaults)
  double beta2 = 0.999;
  double eps = 1e-8;
};

// Activation checkpointing (lib/llt/recompute).
struct RecomputeOptions {
  std::string grad_checkpoint = "none";  // --grad-checkpoint: none | block | every-k | ffn
  int64_t grad_checkpoint_every = 2;     // --grad-checkpoint-every: K of every-k (blocks 0, K, 2K…)
};

}  // namespace llt
