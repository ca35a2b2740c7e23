// Causal attention alone, llt's fused CPU kernel beside the textbook formula (matmul, mask,
// softmax, matmul; what LLT_ATTENTION=reference runs): forward, and forward + backward, in fp32,
// for the shapes llt trains (stories260K's small heads, the LLaMA-2-7B block's). One JSON line
// per shape and kernel on stdout: the median of --repeats timed runs after one warm-up.
// A benchmark, not a test.
#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "llt/attention.h"
#include "llt/runtime.h"

namespace {

struct Shape {
  std::string name;
  int64_t b, h, kv, t, hd;
};

double median_ms(const std::function<void()>& run, int repeats) {
  run();  // warm-up: first-touch pages, thread pool start
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_attention: llt's fused causal attention vs the textbook formula"};
  int threads = 1;
  int repeats = 20;
  app.add_option("--threads", threads, "intra-op threads")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed runs per measurement (median)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  llt::init_process();
  llt::configure_threads(threads);

  const std::vector<Shape> shapes = {
      {"stories260K", 1, 8, 4, 320, 8},
      {"llama2_7b", 1, 32, 32, 128, 128},
      {"llama2_7b", 1, 32, 32, 512, 128},
  };
  for (const auto& s : shapes) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
    const auto q0 = at::randn({s.b, s.h, s.t, s.hd}, gen);
    const auto k0 = at::randn({s.b, s.kv, s.t, s.hd}, gen);
    const auto v0 = at::randn({s.b, s.kv, s.t, s.hd}, gen);
    const auto grad = at::randn({s.b, s.h, s.t, s.hd}, gen);
    for (const std::string kernel : {"reference", "fused"}) {
      auto attend = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return kernel == "fused" ? llt::causal_attention_fused(q, k, v)
                                 : llt::causal_attention_reference(q, k, v);
      };
      const double forward = median_ms(
          [&] {
            at::NoGradGuard no_grad;
            attend(q0, k0, v0);
          },
          repeats);
      const double both = median_ms(
          [&] {
            const auto q = q0.clone().requires_grad_(true);
            const auto k = k0.clone().requires_grad_(true);
            const auto v = v0.clone().requires_grad_(true);
            attend(q, k, v).backward(grad);
          },
          repeats);
      std::cout << nlohmann::json{{"shape", s.name},
                                  {"b", s.b},
                                  {"heads", s.h},
                                  {"kv_heads", s.kv},
                                  {"t", s.t},
                                  {"head_dim", s.hd},
                                  {"kernel", kernel},
                                  {"threads", threads},
                                  {"forward_ms", forward},
                                  {"forward_backward_ms", both}}
                       .dump()
                << std::endl;
    }
  }
  return 0;
}
