// llt-generate: prompts in, completions out (stdout and optional JSONL).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "llt/tools/options.h"

namespace llt::tools {

// A prompt as the user gave it, before any template.
struct PromptRecord {
  std::string prompt;       // text prompt, or the instruction of an Alpaca record
  std::string input;        // Alpaca `input` (JSONL records only), may be empty
  std::optional<PromptTemplate> prompt_template;  // JSON "template" of this record; unset = --template
};

// Reads --prompts-file: a JSON object with a "prompts" array (the seed's seed_prompts.json);
// JSONL when every non-empty line is a JSON object with "prompt" or "instruction" (+ optional
// "input", and "template" to override --template for that record); else one prompt per
// non-empty line. Throws InputError naming the file and line.
std::vector<PromptRecord> read_prompts_file(const std::string& path);

// The text fed to the model for one record under its own template if it names one, else
// `prompt_template`.
std::string apply_template(const PromptRecord& record, PromptTemplate prompt_template);

// Runs llt-generate end to end; returns the process exit code. Throws llt::Error on bad input.
int run_generate(const GenerateToolOptions& options);

}  // namespace llt::tools
