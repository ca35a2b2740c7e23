// Option structs shared by the tools. One spelling per concept: the field `n_layers` is the flag
// `--n-layers`, the TOML key `n-layers` and the JSON key `n_layers`. Only cli.cpp knows CLI11.
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

// Which model to run, where and how.
struct ModelOptions {
  std::string model;            // --model: checkpoint file or directory (format from content)
  std::string tokenizer;        // --tokenizer: SentencePiece .model; default: tokenizer.model beside the model
  std::string device = "auto";  // --device: auto | cpu | cuda[:N]
  std::string dtype = "fp32";   // --dtype: compute dtype fp32 | bf16 | fp16 (fp16 needs CUDA)
  int threads = 0;              // --threads: 0 = SLURM_CPUS_PER_TASK, else all cores
  int64_t n_layers = 0;         // --n-layers: keep only the first N blocks (1 = the P100 debug model)
  std::string adapter;          // --adapter: a LoRA adapter folder (llt-finetune's RUN/adapter)
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

// llt-perplexity (lib/llt/perplexity_tool): mean NLL and perplexity of a model over a dataset's
// samples or a text file's sliding windows.
struct PerplexityToolOptions {
  ModelOptions model;          // --model, --tokenizer (needed for --text), --adapter, --dtype ...
  std::string data;            // --data: an llt-tokenize directory (with manifest.json)
  std::string text;            // --text: a UTF-8 text file, tokenized whole with BOS at the start
  std::string tokens = "labels";  // --tokens (--data): labels (response only) | all
  int64_t window = 0;          // --window (--text): tokens per forward; 0 = the model's max_seq_len
  int64_t stride = 0;          // --stride (--text): tokens between window starts; 0 = --window
  int64_t batch_size = 1;      // --batch-size: samples (or windows) per forward
  std::string per_sample;      // --per-sample: JSONL file, one record per sample or window
  std::string output;          // --output: folder for perplexity.json (usually a run folder)
  bool overwrite = false;      // --overwrite: replace perplexity.json and --per-sample
  std::string command_line;    // as typed
};

// llt-report (lib/llt/report): run folders -> the seed's Table 1 and Table 2, plots, and a
// before/after sheet of completions and perplexity.
struct ReportToolOptions {
  std::vector<std::string> runs;    // RUN_DIR...: llt-finetune run folders, or folders holding
                                    //   only generations.jsonl / perplexity.json (an evaluation)
  std::string output;               // --output: report folder (created; DIR/plots/ for plots)
  bool overwrite = false;           // --overwrite: replace report files already in --output
  bool no_plots = false;            // --no-plots: tables and sheet only (gnuplot not needed)
  std::string gnuplot = "gnuplot";  // --gnuplot: the gnuplot program, a name on PATH or a path
};

// llt-tokenize (lib/llt/tokenize_tool): Alpaca JSON/JSONL -> HDF5 shards (DESIGN.md "Shards").
struct TokenizeToolOptions {
  std::string input;      // --input: Alpaca JSON or JSONL; default: the shipped first 5,000 samples
  std::string tokenizer;  // --tokenizer: SentencePiece .model (required)
  std::string output;     // --output: dataset directory (DIR/NAME/ per --split)
  int64_t max_len = 512;  // --max-len: tokens per sample at most (Alpaca's model_max_length)
  int64_t skip = 0;       // --skip: records to skip first (--first N then takes [skip, skip+N))
  int64_t first = 0;      // --first: records to take after --skip; 0 = all the rest
  std::vector<std::string> splits;  // --split NAME=START:END (repeatable): records -> DIR/NAME
  int64_t samples_per_shard = 10000;     // --samples-per-shard: samples per HDF5 file, at most
  std::string on_bad_record = "fail";    // --on-bad-record: fail (exit 1, nothing written) | skip
  bool overwrite = false;  // --overwrite: replace an existing dataset in --output
  int threads = 0;         // --threads: 0 = SLURM_CPUS_PER_TASK, else all cores
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

// The training loop's own options (flags in parentheses).
struct TrainOptions {
  int64_t batch_size = 1;     // --batch-size: samples per micro-batch (the brief's 1)
  int64_t grad_accum = 8;     // --grad-accum: micro-batches per optimizer step (the brief's 8)
  int64_t epochs = 1;         // --epochs: passes over the data; sets the schedule's length
  int64_t max_steps = 0;      // --max-steps: stop after this many optimizer steps; 0 = no limit
  std::string shuffle = "on";  // --shuffle: on | off (a seeded permutation per epoch)
  uint64_t seed = 0;          // --seed: data order, LoRA init and dropout
  std::string precision = "fp32";  // --precision: fp32 | bf16 | fp16 (autocast compute dtype)
  std::string base_dtype;     // --base-dtype: frozen base weights fp32 | bf16 | fp16; "" = --dtype
  std::string loss_normalization = "tokens";  // --loss-normalization: tokens | micro-batch
  std::string resume = "never";  // --resume: auto | never | PATH (a checkpoints/step-N folder)
  int64_t save_every = 0;     // --save-every: checkpoint every N steps (and always at the end)
  int64_t log_every = 1;      // --log-every: progress line every N steps
  // --memory-cap-gib: the most tensor memory the run may hold, in GiB (0 = no cap), to emulate a
  // smaller device: on CUDA it caps the caching allocator (which excludes the CUDA context), on
  // the CPU the counted host bytes. Over it, the run ends with status oom (exit 3).
  double memory_cap_gib = 0;
  double memory_cap_gb = 0;  // --memory-cap-gb: deprecated (x 1e9 bytes); converted to GiB
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

struct FinetuneToolOptions {
  ModelOptions model;         // --model, --device, --dtype (trainable params), --threads, --n-layers
  LoraOptions lora;
  OptimOptions optim;
  RecomputeOptions recompute;
  TrainOptions train;
  DistributedOptions dist;    // --world-size, --rank, --dist-*
  std::string data;           // --data: an llt-tokenize directory (with manifest.json)
  std::string output;         // --output: the run folder (refused if it exists, but --resume auto)
  std::string config_text;    // the resolved options as TOML (written to the run folder)
  std::string command_line;   // as typed
};

}  // namespace llt
