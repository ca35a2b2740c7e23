// Stanford Alpaca's prompt templates, exactly as in stanford_alpaca's train.py (PROMPT_DICT).
#pragma once

#include <string>

namespace llt {

// "prompt_input": used when a record's `input` is non-empty.
inline constexpr const char* kAlpacaPromptInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";

// "prompt_no_input": used when `input` is empty.
inline constexpr const char* kAlpacaPromptNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:";

// The Alpaca source text for one record: the template chosen by whether `input` is empty, with
// {instruction} and {input} substituted (each once, as Python's str.format_map does).
std::string format_alpaca_prompt(const std::string& instruction, const std::string& input);

}  // namespace llt
