// The tools' option structs: one per tool, composed of the library's option structs
// (llt/options.h) and the tool's own fields. One spelling per concept: the field `n_layers` is the
// flag `--n-layers`, the TOML key `n-layers` and the JSON key `n_layers`. Only cli.cpp knows CLI11.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "llt/options.h"

namespace llt::tools {

// How llt-generate wraps each prompt: as given, or in stanford_alpaca's instruction template.
enum class PromptTemplate { kNone, kAlpaca };
inline const NameTable<PromptTemplate>& names(PromptTemplate) {
  static const NameTable<PromptTemplate> table{{"none", PromptTemplate::kNone},
                                               {"alpaca", PromptTemplate::kAlpaca}};
  return table;
}

// What llt-tokenize does with a record it cannot use: stop (exit 1, nothing written), or drop it
// and list it in the manifest.
enum class OnBadRecord { kFail, kSkip };
inline const NameTable<OnBadRecord>& names(OnBadRecord) {
  static const NameTable<OnBadRecord> table{{"fail", OnBadRecord::kFail},
                                            {"skip", OnBadRecord::kSkip}};
  return table;
}

// Where llt-finetune starts: a new run folder (refusing an existing one), the run folder's latest
// checkpoint (or a new run where there is none), or a given checkpoints/step-N folder.
enum class ResumeMode { kNever, kAuto, kPath };
inline const NameTable<ResumeMode>& names(ResumeMode) {
  static const NameTable<ResumeMode> table{{"never", ResumeMode::kNever},
                                           {"auto", ResumeMode::kAuto}};
  return table;  // kPath has no name: --resume PATH
}

// Which model to run, where and how.
struct ModelOptions {
  std::string model;            // --model: checkpoint file or directory (format from content)
  std::string tokenizer;        // --tokenizer: SentencePiece .model; default: tokenizer.model beside the model
  std::string device = "auto";  // --device: auto | cpu | cuda[:N]
  Dtype dtype = Dtype::kFp32;   // --dtype: compute dtype fp32 | bf16 | fp16 (fp16 needs CUDA)
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
  PromptTemplate prompt_template = PromptTemplate::kNone;  // --template: none | alpaca
  bool kv_cache = true;              // --kv-cache: on | off
  bool bos = true;                   // --bos: prepend BOS to each prompt (as Meta and llama2.c do)
  int64_t batch_size = 8;            // --batch-size: prompts decoded together
  std::string output;                // --output: JSONL file, one record per prompt
  bool overwrite = false;            // --overwrite: replace an existing --output file
  std::string command_line;          // as typed
};

// llt-perplexity (lib/llt/tools/perplexity): mean NLL and perplexity of a model over a dataset's
// samples or a text file's sliding windows.
struct PerplexityToolOptions {
  ModelOptions model;          // --model, --tokenizer (needed for --text), --adapter, --dtype ...
  std::string data;            // --data: an llt-tokenize directory (with manifest.json)
  std::string text;            // --text: a UTF-8 text file, tokenized whole with BOS at the start
  ScoredTokens tokens = ScoredTokens::kLabels;  // --tokens (--data): labels (response only) | all
  int64_t window = 0;          // --window (--text): tokens per forward; 0 = the model's max_seq_len
  int64_t stride = 0;          // --stride (--text): tokens between window starts; 0 = --window
  int64_t batch_size = 1;      // --batch-size: samples (or windows) per forward
  std::string per_sample;      // --per-sample: JSONL file, one record per sample or window
  std::string output;          // --output: folder for perplexity.json (usually a run folder)
  bool overwrite = false;      // --overwrite: replace perplexity.json and --per-sample
  std::string command_line;    // as typed
};

// llt-export (lib/llt/tools/export): a model (a base, a base with --adapter merged, or a full
// fine-tuning run) as a Hugging Face transformers folder or in Meta's layout.
struct ExportToolOptions {
  std::string model;      // --model: the base checkpoint or preset:NAME (with --run: default the
                          //   run's config.toml model, which gives the configuration)
  std::string adapter;    // --adapter: a LoRA adapter folder (a run's adapter/), merged in
  std::string run;        // --run: a full fine-tuning run folder (its latest checkpoints/step-N)
                          //   or a checkpoints/step-N folder
  std::string tokenizer;  // --tokenizer: SentencePiece .model; default tokenizer.model beside --model
  int64_t n_layers = 0;   // --n-layers: keep only the first N blocks (0: all; --run: the run's)
  ExportFormat format = ExportFormat::kHuggingFace;  // --format: hf | meta
  std::optional<Dtype> dtype;  // --dtype: of the written tensors; unset: as the weights are stored
  int64_t max_shard_size = 5'000'000'000;  // --max-shard-size: bytes per safetensors file ("5GB",
                                           //   transformers' default; GB = 1e9, GiB = 2^30)
  std::string output;      // --output: the folder written (refused if it exists and is not empty)
  bool overwrite = false;  // --overwrite: replace an existing --output folder
  int threads = 0;         // --threads: 0 = SLURM_CPUS_PER_TASK, else all cores
  std::string command_line;  // as typed
};

// llt-report (lib/llt/tools/report): run folders -> the seed's Table 1 and Table 2, plots, and a
// before/after sheet of completions and perplexity.
struct ReportToolOptions {
  std::vector<std::string> runs;    // RUN_DIR...: llt-finetune run folders, or folders holding
                                    //   only generations.jsonl / perplexity.json (an evaluation)
  std::string output;               // --output: report folder (created; DIR/plots/ for plots)
  bool overwrite = false;           // --overwrite: replace report files already in --output
  bool no_plots = false;            // --no-plots: tables and sheet only (gnuplot not needed)
  std::string gnuplot = "gnuplot";  // --gnuplot: the gnuplot program, a name on PATH or a path
  double gnuplot_timeout_s = 120;   // --gnuplot-timeout: seconds per plot at most (0: no limit)
};

// llt-tokenize (lib/llt/tools/tokenize): Alpaca JSON/JSONL -> HDF5 shards (DESIGN.md "Shards").
struct TokenizeToolOptions {
  std::string input;      // --input: Alpaca JSON or JSONL; default: the shipped first 5,000 samples
  std::string tokenizer;  // --tokenizer: SentencePiece .model (required)
  std::string output;     // --output: dataset directory (DIR/NAME/ per --split)
  int64_t max_len = 512;  // --max-len: tokens per sample at most (Alpaca's model_max_length)
  int64_t skip = 0;       // --skip: records to skip first (--first N then takes [skip, skip+N))
  int64_t first = 0;      // --first: records to take after --skip; 0 = all the rest
  std::vector<std::string> splits;  // --split NAME=START:END (repeatable): records -> DIR/NAME
  int64_t samples_per_shard = 10000;     // --samples-per-shard: samples per HDF5 file, at most
  int64_t max_record_bytes = 1048576;    // --max-record-bytes: a longer record is bad (1 MiB)
  OnBadRecord on_bad_record = OnBadRecord::kFail;  // --on-bad-record: fail | skip
  bool overwrite = false;  // --overwrite: replace an existing dataset in --output
  int threads = 0;         // --threads: 0 = SLURM_CPUS_PER_TASK, else all cores
};

// The training loop's own options (flags in parentheses).
struct TrainOptions {
  int64_t batch_size = 1;     // --batch-size: samples per micro-batch (the brief's 1)
  int64_t grad_accum = 8;     // --grad-accum: micro-batches per optimizer step (the brief's 8)
  int64_t epochs = 1;         // --epochs: passes over the data; sets the schedule's length
  int64_t max_steps = 0;      // --max-steps: stop after this many optimizer steps; 0 = no limit
  bool shuffle = true;        // --shuffle: on | off (a seeded permutation per epoch)
  uint64_t seed = 0;          // --seed: data order, LoRA init and dropout
  Dtype precision = Dtype::kFp32;  // --precision: fp32 | bf16 | fp16 (autocast compute dtype)
  std::optional<Dtype> base_dtype;  // --base-dtype: frozen base weights; unset = --dtype
  LossNormalization loss_normalization = LossNormalization::kTokens;  // --loss-normalization
  ResumeMode resume = ResumeMode::kNever;  // --resume: never | auto | PATH ...
  std::string resume_path;                 // ... a checkpoints/step-N folder (kPath)
  int64_t save_every = 0;     // --save-every: checkpoint every N steps (and always at the end)
  int64_t log_every = 1;      // --log-every: progress line every N steps
  // --memory-cap-gib: the most tensor memory the run may hold, in GiB (0 = no cap), to emulate a
  // smaller device: on CUDA it caps the caching allocator (which excludes the CUDA context), on
  // the CPU the counted host bytes. Over it, the run ends with status oom (exit 3).
  double memory_cap_gib = 0;
};

struct FinetuneToolOptions {
  ModelOptions model;         // --model, --device, --dtype (trainable params), --threads, --n-layers
  LoraOptions lora;
  OptimOptions optim;
  RecomputeOptions recompute;
  TrainOptions train;
  DistributedOptions dist;    // --world-size, --rank, --dist-*
  std::string data;           // --data: an llt-tokenize directory (with manifest.json)
  // --eval-data: a held-out llt-tokenize split (same tokenizer), scored at step 0, every
  // --eval-every steps (0: no others) and at the end.
  std::string eval_data;
  int64_t eval_every = 0;
  // --hf-base: the base model's Hugging Face Hub name for adapter-peft/'s
  // base_model_name_or_path; default: an HF --model folder's own _name_or_path.
  std::string hf_base;
  std::string output;         // --output: the run folder (refused if it exists, but --resume auto)
  std::string config_text;    // the resolved options as TOML (written to the run folder)
  std::string command_line;   // as typed
};

}  // namespace llt::tools
