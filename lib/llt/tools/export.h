// llt-export: a model as other programs load it (lib/llt/export): the base checkpoint, the base
// with a LoRA adapter merged in (--adapter), or a full fine-tuning run (--run), written as a
// Hugging Face transformers folder or in Meta's layout into --output, whole or not at all.
#pragma once

#include "llt/tools/options.h"

namespace llt::tools {

// Runs llt-export end to end; returns the exit code (0). Checks the options, the inputs and the
// output folder (refused if it exists and is not empty, unless --overwrite) before writing;
// writes into a staging folder beside --output and renames it into place, removing it on any
// error (an existing --output is kept until the new one is whole). Throws InputError on bad
// input, llt::Error otherwise.
int run_export(const ExportToolOptions& options);

}  // namespace llt::tools
