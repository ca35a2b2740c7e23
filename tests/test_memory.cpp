// Memory probes: the counting CPU allocator follows a tensor's life and reuses freed large
// blocks; the memory cap throws OutOfMemoryError (also from inside ATen ops and backward) and the
// process carries on; the host cache limit from the environment; RSS. The analytic estimate is
// tests/test_memory_estimate.cpp.
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include "llt/errors.h"
#include "llt/memory.h"

namespace llt {
namespace {

constexpr int64_t kMiB = 1 << 20;

class Memory : public ::testing::Test {
 protected:
  void SetUp() override { install_host_memory_counter(); }
  void TearDown() override {
    set_host_memory_cap(0);
    set_host_cache_limit(0);
  }
};

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST_F(Memory, FreedLargeBlocksAreReusedAndNotCounted) {
  set_host_cache_limit(256 * kMiB);
  const int64_t before = host_memory_stats().current;
  void* first = nullptr;
  {
    const auto t = at::empty({40 * kMiB / 4}, at::kFloat);  // 40 MiB: above glibc's mmap threshold
    first = t.data_ptr();
    EXPECT_EQ(host_memory_stats().current - before, 40 * kMiB);  // counted as requested
  }
  EXPECT_EQ(host_memory_stats().current, before);
  EXPECT_EQ(host_memory_stats().cached, 40 * kMiB);  // a multiple of 2 MiB already
  {
    // The same rounded size (39 MiB + 1 byte -> 40 MiB) gets the same block back.
    const auto t = at::empty({39 * kMiB + 1}, at::kByte);
    EXPECT_EQ(t.data_ptr(), first);
    EXPECT_EQ(host_memory_stats().cached, 0);
    EXPECT_EQ(host_memory_stats().current - before, 39 * kMiB + 1);
    const auto other = at::empty({50 * kMiB}, at::kByte);  // another size: a new block
    EXPECT_NE(other.data_ptr(), first);
  }
  EXPECT_EQ(host_memory_stats().cached, 40 * kMiB + 50 * kMiB);
  {
    // A reused block holds whatever was there, as from malloc; ops that need zeros write them.
    const auto zeros = at::zeros({50 * kMiB}, at::kByte);
    EXPECT_EQ(host_memory_stats().cached, 40 * kMiB);
    EXPECT_EQ(zeros.sum().item<int64_t>(), 0);
  }
  empty_host_cache();
  EXPECT_EQ(host_memory_stats().cached, 0);
  EXPECT_EQ(host_memory_stats().current, before);
}

TEST_F(Memory, SmallBlocksAndBlocksOverTheLimitAreNotCached) {
  set_host_cache_limit(64 * kMiB);
  { const auto small = at::empty({4 * kMiB}, at::kByte); }  // below 32 MiB: glibc's heap
  EXPECT_EQ(host_memory_stats().cached, 0);
  { const auto big = at::empty({100 * kMiB}, at::kByte); }  // over the limit by itself
  EXPECT_EQ(host_memory_stats().cached, 0);
  {
    const auto a = at::empty({40 * kMiB}, at::kByte);
    const auto b = at::empty({40 * kMiB}, at::kByte);
  }  // the first freed fits, the second would take the cache to 80 MiB
  EXPECT_EQ(host_memory_stats().cached, 40 * kMiB);
  set_host_cache_limit(0);  // off: frees what is kept
  EXPECT_EQ(host_memory_stats().cached, 0);
  { const auto c = at::empty({40 * kMiB}, at::kByte); }
  EXPECT_EQ(host_memory_stats().cached, 0);
}

// Steps whose large tensors (a 48 MB weight's gradient, its temporaries) come from reused blocks
// give the bits of steps whose blocks are fresh (zeroed by the kernel): nothing relies on
// fresh memory being zero.
TEST_F(Memory, StepsWithReusedBlocksEqualStepsWithFreshOnes) {
  auto run = [](int64_t cache_limit) {
    set_host_cache_limit(cache_limit);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    auto w = at::randn({3000, 4000}, gen).mul_(0.01).requires_grad_(true);
    const auto x = at::randn({8, 4000}, gen);
    for (int step = 0; step < 4; ++step) {
      const auto loss = at::matmul(x, w.t()).tanh().pow(2).sum();
      loss.backward();
      {
        at::NoGradGuard no_grad;
        w.sub_(w.grad() * 1e-3 + w.grad().sign() * 1e-4);
      }
      w.mutable_grad().reset();  // set_to_none, as llt's AdamW::zero_grad
    }
    const auto cached = host_memory_stats().cached;
    set_host_cache_limit(0);
    return std::make_pair(w.detach().clone(), cached);
  };
  const auto [fresh, none_cached] = run(0);
  const auto [reused, some_cached] = run(512 * kMiB);
  EXPECT_EQ(none_cached, 0);
  EXPECT_GT(some_cached, 0);
  EXPECT_TRUE(at::equal(fresh, reused));
}

TEST(HostCacheLimit, FromTheEnvironment) {
  {
    ScopedEnv env("LLT_HOST_CACHE_MB", "100");
    EXPECT_EQ(host_cache_limit_from_env(), 100 * kMiB);
  }
  {
    ScopedEnv env("LLT_HOST_CACHE_MB", "0");
    EXPECT_EQ(host_cache_limit_from_env(), 0);
  }
  for (const char* bad : {"", "-1", "12x", "lots"}) {
    ScopedEnv env("LLT_HOST_CACHE_MB", bad);
    EXPECT_THROW(host_cache_limit_from_env(), InputError) << bad;
  }
  ScopedEnv unset("LLT_HOST_CACHE_MB", nullptr);
  {
    ScopedEnv job("SLURM_MEM_PER_NODE", "2000");  // a 2000 MB job: a quarter of it
    EXPECT_EQ(host_cache_limit_from_env(), 500 * kMiB);
  }
  ScopedEnv no_job("SLURM_MEM_PER_NODE", nullptr);
  const int64_t limit = host_cache_limit_from_env();
  EXPECT_GT(limit, 0);
  EXPECT_LE(limit, 8192 * kMiB);
}

TEST_F(Memory, CountsRiseAndFallWithATensor) {
  ASSERT_TRUE(host_memory_counter_installed());
  const int64_t before = host_memory_stats().current;
  reset_host_peak();
  {
    const auto t = at::empty({4 * kMiB / 4}, at::kFloat);  // 4 MiB
    const auto during = host_memory_stats();
    EXPECT_GE(during.current - before, 4 * kMiB);
    EXPECT_LT(during.current - before, 4 * kMiB + 4096);
    EXPECT_GE(during.peak, during.current);
  }
  const auto after = host_memory_stats();
  EXPECT_EQ(after.current, before);
  EXPECT_GE(after.peak - before, 4 * kMiB);
  reset_host_peak();
  EXPECT_EQ(host_memory_stats().peak, after.current);
}

TEST_F(Memory, CapThrowsOutOfMemoryAndTheProcessCarriesOn) {
  const int64_t before = host_memory_stats().current;
  set_host_memory_cap(before + kMiB);
  EXPECT_THROW(at::empty({4 * kMiB / 4}, at::kFloat), OutOfMemoryError);
  EXPECT_EQ(host_memory_stats().current, before);  // nothing leaked by the failure
  EXPECT_NO_THROW(at::empty({1024}, at::kFloat));  // small ones still fit

  // From inside an op, and from backward.
  const auto a = at::randn({256, 256});  // 256 KiB each
  set_host_memory_cap(host_memory_stats().current + 300 * 1024);
  EXPECT_THROW(at::matmul(at::cat({a, a}), a), OutOfMemoryError);
  set_host_memory_cap(0);
  const auto w = at::randn({512, 512}).requires_grad_(true);
  const auto loss = at::matmul(a, w.narrow(0, 0, 256)).sum();
  set_host_memory_cap(host_memory_stats().current + 64 * 1024);
  EXPECT_THROW(loss.backward(), OutOfMemoryError);

  set_host_memory_cap(0);
  const auto big = at::ones({16 * kMiB / 4});
  EXPECT_EQ(big.sum().item<float>(), 16 * kMiB / 4);
}

TEST_F(Memory, ProcessRss) {
  const auto p = process_memory();
  EXPECT_GT(p.rss, 10 * kMiB);  // libtorch alone
  EXPECT_GE(p.peak_rss, p.rss);
  const auto s = sample_memory(c10::Device(c10::kCPU));
  EXPECT_EQ(s.allocated, host_memory_stats().current);
  EXPECT_GT(s.rss, 0);
}

}  // namespace
}  // namespace llt
