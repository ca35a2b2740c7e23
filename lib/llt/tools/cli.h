// Command-line parsing for every tool (CLI11 lives only in cli.cpp). Flags are long, kebab-case
// and mirror the option fields; `--config FILE.toml` takes the same names as flat keys.
#pragma once

#include <functional>
#include <string>

#include "llt/tools/options.h"

namespace llt::tools {

// Thrown when parsing ends the program: `--help` (code 0, help printed) or a usage error
// (code 1, a one-line error printed to stderr).
struct Exit {
  int code;
};

// Parses llt-generate's command line. Throws Exit.
GenerateToolOptions parse_generate(int argc, char** argv);

// Parses llt-tokenize's command line. Throws Exit.
TokenizeToolOptions parse_tokenize(int argc, char** argv);

// Parses llt-finetune's command line; fills config_text (resolved TOML) and command_line.
// Throws Exit.
FinetuneToolOptions parse_finetune(int argc, char** argv);

// Parses llt-perplexity's command line; fills command_line. Throws Exit.
PerplexityToolOptions parse_perplexity(int argc, char** argv);

// Parses llt-export's command line; fills command_line. Throws Exit.
ExportToolOptions parse_export(int argc, char** argv);

// Parses llt-report's command line. Throws Exit.
ReportToolOptions parse_report(int argc, char** argv);

// The command line as one shell-quoted string (recorded in outputs such as manifest.json).
std::string command_line(int argc, char** argv);

// Every tool's main: process set-up (llt::init_process), then `body` (parse, then run); returns
// its exit code, Exit's code, or the code report_exception gives an exception (printed as
// "<tool>: <message>").
int tool_main(const char* tool, const std::function<int()>& body);

}  // namespace llt::tools
