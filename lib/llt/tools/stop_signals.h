// SLURM's stop signals (SIGUSR1 before the time limit, SIGTERM on scancel or pre-emption): one
// way to catch them, shared by llt-finetune's launcher (which has no LibTorch and no libllt) and
// the tool itself. Header-only so the launcher needs nothing to link.
#pragma once

#include <csignal>

namespace llt::tools {

// Makes SIGUSR1 and SIGTERM call `handler` (which only sets a flag); interrupted system calls
// restart.
inline void catch_stop_signals(void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

}  // namespace llt::tools
