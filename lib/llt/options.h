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

}  // namespace llt
