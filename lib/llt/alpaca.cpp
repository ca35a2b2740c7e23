#include "llt/alpaca.h"

namespace llt {
namespace {

void replace_once(std::string& text, const std::string& key, const std::string& value) {
  const auto pos = text.find(key);
  if (pos != std::string::npos) text.replace(pos, key.size(), value);
}

}  // namespace

std::string format_alpaca_prompt(const std::string& instruction, const std::string& input) {
  std::string text = input.empty() ? kAlpacaPromptNoInput : kAlpacaPromptInput;
  // {input} comes after {instruction} in both templates: substitute it first so an instruction
  // that itself contains "{input}" is left as written.
  replace_once(text, "{input}", input);
  replace_once(text, "{instruction}", instruction);
  return text;
}

}  // namespace llt
