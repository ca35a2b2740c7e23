// llt-finetune: a launcher that catches SLURM's stop signals (SIGUSR1, SIGTERM) from its first
// instant, then loads the library and runs the tool. Loading LibTorch takes ~0.3 s here (the
// dynamic loader relocating it, before any code of ours could run in a binary linked against
// it), and a stop signal in that window killed the process (exit 138), which SLURM does not
// requeue. Here it is held in a flag the tool reads: exit 75, nothing written.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <cstdio>
#include <string>

#include "llt/tools/stop_signals.h"

namespace {

volatile sig_atomic_t g_stopped = 0;

extern "C" void on_stop_signal(int) { g_stopped = 1; }

}  // namespace

int main(int argc, char** argv) {
  llt::tools::catch_stop_signals(on_stop_signal);
  // The library lies beside the binary's real path (a symlink in /usr/local/bin is followed).
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  std::string dir = n > 0 ? std::string(exe, static_cast<size_t>(n)) : std::string(argv[0]);
  dir.erase(dir.rfind('/') + 1);
  const std::string library = dir + LLT_LIBRARY;
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    std::fprintf(stderr, "llt-finetune: error: cannot load %s: %s\n", library.c_str(), dlerror());
    return 2;
  }
  using Entry = int (*)(int, char**, const volatile sig_atomic_t*);
  const auto entry = reinterpret_cast<Entry>(dlsym(handle, "llt_finetune_main"));
  if (entry == nullptr) {
    std::fprintf(stderr, "llt-finetune: error: %s has no llt_finetune_main (another llt build?)\n",
                 library.c_str());
    return 2;
  }
  return entry(argc, argv, &g_stopped);
}
