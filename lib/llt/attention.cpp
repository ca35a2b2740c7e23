#include "llt/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "llt/compat.h"
#include "llt/errors.h"
#include "llt/model.h"

// The row kernels below are compiled three times on x86-64 GCC (AVX-512, AVX2+FMA, baseline) and
// the loader picks one for the CPU it runs on (ifunc), so the library stays portable while the
// loops vectorise. Each loop is written so that vectorising it needs no reassociation of float
// sums (lanes are independent partial sums), so results do not depend on the clone chosen.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LLT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLT_CLONES
#endif
#define LLT_ALWAYS_INLINE inline __attribute__((always_inline))
// Vector values never cross a call boundary here (helpers are always inlined into one clone),
// so GCC's note that passing them changes the ABI between ISAs does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace llt {
namespace {

// 16 floats as one value (GCC/Clang vector extension): a zmm register in the AVX-512 clone, two
// ymm in the AVX2 one, four xmm in the baseline. Rows of scores are padded to whole vectors.
constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef float HalfVec __attribute__((vector_size(kLanes / 2 * sizeof(float))));

LLT_ALWAYS_INLINE Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
LLT_ALWAYS_INLINE void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
LLT_ALWAYS_INLINE Vec splat(float x) { return Vec{} + x; }
LLT_ALWAYS_INLINE int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// exp(x) for x <= 0 (softmax shifts by the row maximum or the log-sum-exp): Cephes' expf (range
// reduction by ln 2 in two parts, degree-6 polynomial), within 2 ulp of std::exp on [-87, 0];
// exactly 0 below -87 (masked keys are -inf). Round-to-nearest by the 1.5 * 2^23 trick and the
// exponent built in integer lanes, so it is plain vector arithmetic in every clone.
LLT_ALWAYS_INLINE Vec exp_nonpositive(Vec x) {
  const IVec underflow = x < -87.0f;
  x = underflow ? splat(-87.0f) : x;
  x = x > 0.0f ? splat(0.0f) : x;
  const Vec magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Vec n = (x * 1.44269504088896341f + magic) - magic;
  const Vec r = x - n * 0.693359375f - n * -2.12194440e-4f;
  Vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const IVec bits = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  const Vec result = p * two_n;
  return underflow ? splat(0.0f) : result;
}

// s[j] = scale * sum_d q[d] * kt[d * ld + j] for the padded(n) columns of a (hd, ld) transposed
// key block (ld a multiple of 16), then -inf for j >= n (keys the query may not see). Four key
// blocks at a time: four independent FMA chains share each broadcast q[d].
LLT_CLONES void scores_row(const float* __restrict q, const float* __restrict kt, int64_t ld,
                           int64_t n, int64_t hd, float scale, float* __restrict s) {
  int64_t j0 = 0;
  for (; j0 + 4 * kLanes <= padded(n); j0 += 4 * kLanes) {
    Vec a0{}, a1{}, a2{}, a3{};
    for (int64_t d = 0; d < hd; ++d) {
      const float* row = kt + d * ld + j0;
      const float qd = q[d];
      a0 += qd * load(row);
      a1 += qd * load(row + kLanes);
      a2 += qd * load(row + 2 * kLanes);
      a3 += qd * load(row + 3 * kLanes);
    }
    store(s + j0, a0 * scale);
    store(s + j0 + kLanes, a1 * scale);
    store(s + j0 + 2 * kLanes, a2 * scale);
    store(s + j0 + 3 * kLanes, a3 * scale);
  }
  for (; j0 < n; j0 += kLanes) {  // the last blocks: four chains over d mod 4 instead
    Vec a0{}, a1{}, a2{}, a3{};
    int64_t d = 0;
    for (; d + 4 <= hd; d += 4) {
      const float* row = kt + d * ld + j0;
      a0 += q[d] * load(row);
      a1 += q[d + 1] * load(row + ld);
      a2 += q[d + 2] * load(row + 2 * ld);
      a3 += q[d + 3] * load(row + 3 * ld);
    }
    for (; d < hd; ++d) a0 += q[d] * load(kt + d * ld + j0);
    store(s + j0, ((a0 + a1) + (a2 + a3)) * scale);
  }
  for (int64_t j = n; j < padded(n); ++j) s[j] = -INFINITY;
}

typedef float QuarterVec __attribute__((vector_size(kLanes / 4 * sizeof(float))));

// Sum of the 16 lanes, halving in a fixed order.
LLT_ALWAYS_INLINE float lane_sum(Vec v) {
  HalfVec lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const HalfVec h = lo + hi;
  QuarterVec a, b;
  std::memcpy(&a, &h, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&h) + sizeof a, sizeof b);
  const QuarterVec quarter = a + b;
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

// The same scores from untransposed keys (rows of hd floats, row stride ld), for head sizes that
// are a multiple of 16: dot products along the head dimension, four keys at a time sharing each
// load of q. Used for large heads, where transposing the keys costs as much as the scores.
LLT_CLONES void scores_row_dot(const float* __restrict q, const float* __restrict k, int64_t ld,
                               int64_t n, int64_t hd, float scale, float* __restrict s) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    Vec a0{}, a1{}, a2{}, a3{};
    const float* k0 = k + j * ld;
    for (int64_t d = 0; d < hd; d += kLanes) {
      const Vec qv = load(q + d);
      a0 += qv * load(k0 + d);
      a1 += qv * load(k0 + ld + d);
      a2 += qv * load(k0 + 2 * ld + d);
      a3 += qv * load(k0 + 3 * ld + d);
    }
    s[j] = lane_sum(a0) * scale;
    s[j + 1] = lane_sum(a1) * scale;
    s[j + 2] = lane_sum(a2) * scale;
    s[j + 3] = lane_sum(a3) * scale;
  }
  for (; j < n; ++j) {
    Vec acc{};
    for (int64_t d = 0; d < hd; d += kLanes) acc += load(q + d) * load(k + j * ld + d);
    s[j] = lane_sum(acc) * scale;
  }
  for (; j < padded(n); ++j) s[j] = -INFINITY;
}

// Large heads take scores from the key rows as they are; small ones from a transposed copy.
bool transpose_keys(int64_t hd) { return !(hd >= 64 && hd % kLanes == 0); }

LLT_CLONES float row_max(const float* __restrict s, int64_t n) {
  Vec m = splat(-INFINITY);
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const Vec x = load(s + j0);
    m = m < x ? x : m;
  }
  float out = m[0];
  for (int64_t l = 1; l < kLanes; ++l) out = out < m[l] ? m[l] : out;
  return out;
}

// s[j] = exp(s[j] - shift) over the padded row; returns the sum (fixed lane order).
LLT_CLONES float exp_shift_sum(float* __restrict s, int64_t n, float shift) {
  Vec sum{};
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const Vec e = exp_nonpositive(load(s + j0) - shift);
    store(s + j0, e);
    sum += e;
  }
  float out = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) out += sum[l];
  return out;
}

// ds[j] = p[j] * (dp[j] - delta), with p[j] = exp(s[j] - lse) recomputed in place in s.
LLT_CLONES void softmax_grad_row(float* __restrict s, float* __restrict dp, int64_t n, float lse,
                                 float delta) {
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const Vec p = exp_nonpositive(load(s + j0) - lse);
    store(s + j0, p);
    store(dp + j0, p * (load(dp + j0) - delta));
  }
}

// out[d] += alpha * sum_j w[j] * rows[j * ld + d]   (d < hd). Accumulates in registers, four
// independent sums per slice of the row (keys j = 0, 1, 2, 3 mod 4), added in a fixed order.
template <typename V>
LLT_ALWAYS_INLINE void weighted_slice(const float* __restrict w, const float* __restrict rows,
                                      int64_t ld, int64_t n, float alpha, float* __restrict out) {
  V a0{}, a1{}, a2{}, a3{};
  auto at = [&](int64_t j) {
    V v;
    std::memcpy(&v, rows + j * ld, sizeof v);
    return v;
  };
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    a0 += w[j] * at(j);
    a1 += w[j + 1] * at(j + 1);
    a2 += w[j + 2] * at(j + 2);
    a3 += w[j + 3] * at(j + 3);
  }
  for (; j < n; ++j) a0 += w[j] * at(j);
  V o;
  std::memcpy(&o, out, sizeof o);
  o += alpha * ((a0 + a1) + (a2 + a3));
  std::memcpy(out, &o, sizeof o);
}

LLT_CLONES void weighted_rows(const float* __restrict w, const float* __restrict rows, int64_t ld,
                              int64_t n, int64_t hd, float alpha, float* __restrict out) {
  int64_t d = 0;
  for (; d + kLanes <= hd; d += kLanes) weighted_slice<Vec>(w, rows + d, ld, n, alpha, out + d);
  if (d + kLanes / 2 <= hd) {
    weighted_slice<HalfVec>(w, rows + d, ld, n, alpha, out + d);
    d += kLanes / 2;
  }
  for (; d < hd; ++d) {  // head sizes that are not a multiple of 8
    float acc = 0.0f;
    for (int64_t j = 0; j < n; ++j) acc += w[j] * rows[j * ld + d];
    out[d] += alpha * acc;
  }
}

// rows[j * hd + d] += (alpha * w[j]) * x[d]   (a rank-1 update of n contiguous rows)
LLT_CLONES void rank1_rows(const float* __restrict w, const float* __restrict x, int64_t n,
                           int64_t hd, float alpha, float* __restrict rows) {
  for (int64_t j = 0; j < n; ++j) {
    const float wj = alpha * w[j];
    float* row = rows + j * hd;
    for (int64_t d = 0; d < hd; ++d) row[d] += wj * x[d];
  }
}

// The same update on the transposed layout: cols[d * ld + j] += (alpha * w[j]) * x[d], j < n,
// vectorised along the keys (a head row of 8 floats is shorter than one vector).
LLT_CLONES void rank1_cols(const float* __restrict w, const float* __restrict x, int64_t n,
                           int64_t hd, float alpha, float* __restrict cols, int64_t ld) {
  for (int64_t d = 0; d < hd; ++d) {
    const float xd = x[d];
    float* col = cols + d * ld;
    int64_t j0 = 0;
    for (; j0 + kLanes <= n; j0 += kLanes) {
      store(col + j0, load(col + j0) + (alpha * load(w + j0)) * xd);
    }
    for (; j0 < n; ++j0) col[j0] += (alpha * w[j0]) * xd;  // w is not finite past n
  }
}

// (hd, padded(S)) transpose of the S rows of one kv head (row stride ld), zero padded.
void transpose_rows(const float* rows, int64_t ld, int64_t s, int64_t hd, float* out) {
  const int64_t width = padded(s);
  for (int64_t j = 0; j < s; ++j) {
    for (int64_t d = 0; d < hd; ++d) out[d * width + j] = rows[j * ld + d];
  }
  for (int64_t d = 0; d < hd; ++d) {
    for (int64_t j = s; j < width; ++j) out[d * width + j] = 0.0f;
  }
}

// Scores of query rows against the S keys of one kv head, from whichever layout suits hd.
class KeyScores {
 public:
  KeyScores(int64_t s, int64_t hd)
      : s_(s), hd_(hd), width_(padded(s)), transposed_(transpose_keys(hd)) {
    if (transposed_) buffer_.resize(hd * width_);
  }
  // The kv head's rows (row stride ld), valid until the next set().
  void set(const float* rows, int64_t ld) {
    if (transposed_) {
      transpose_rows(rows, ld, s_, hd_, buffer_.data());
    } else {
      rows_ = rows;
      ld_ = ld;
    }
  }
  // out[j] = scale * q . key_j for j < n, -inf up to padded(n).
  void row(const float* q, int64_t n, float scale, float* out) const {
    if (transposed_) {
      scores_row(q, buffer_.data(), width_, n, hd_, scale, out);
    } else {
      scores_row_dot(q, rows_, ld_, n, hd_, scale, out);
    }
  }

 private:
  int64_t s_, hd_, width_;
  bool transposed_;
  std::vector<float> buffer_;
  const float* rows_ = nullptr;
  int64_t ld_ = 0;
};

// Accumulates rank-1 updates rows[j * hd + d] += (alpha * w[j]) * x[d] (j < n) into the S rows
// of one kv head's dk or dv: straight into the rows for large heads, through a transposed
// (hd, padded(S)) buffer for small ones (the layout KeyScores uses for them). The buffer is
// added to the rows once, at finish(), so each element sums the same terms in the same order.
class RankOneRows {
 public:
  RankOneRows(int64_t s, int64_t hd)
      : s_(s), hd_(hd), width_(padded(s)), transposed_(transpose_keys(hd)) {
    if (transposed_) buffer_.resize(hd * width_);
  }
  void start(float* rows) {
    rows_ = rows;
    if (transposed_) std::fill(buffer_.begin(), buffer_.end(), 0.0f);
  }
  void add(const float* w, const float* x, int64_t n, float alpha) {
    if (transposed_) {
      rank1_cols(w, x, n, hd_, alpha, buffer_.data(), width_);
    } else {
      rank1_rows(w, x, n, hd_, alpha, rows_);
    }
  }
  void finish() {
    if (!transposed_) return;
    for (int64_t j = 0; j < s_; ++j) {
      for (int64_t d = 0; d < hd_; ++d) rows_[j * hd_ + d] += buffer_[d * width_ + j];
    }
  }

 private:
  int64_t s_, hd_, width_;
  bool transposed_;
  std::vector<float> buffer_;
  float* rows_ = nullptr;
};

struct Shapes {
  int64_t b, h, t, hd, kv, s, n_rep, offset;
};

Shapes check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "attention: q, k, v must be 4-D, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  Shapes s{q.size(0), q.size(1), q.size(2), q.size(3), k.size(1), k.size(2), 0, 0};
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k ", k.sizes(), " and v ", v.sizes(), " differ");
  TORCH_CHECK(k.size(0) == s.b && k.size(3) == s.hd, "attention: q ", q.sizes(), " and k ",
              k.sizes(), " disagree on batch or head_dim");
  TORCH_CHECK(s.kv > 0 && s.h % s.kv == 0, "attention: ", s.kv, " kv heads do not divide ", s.h,
              " query heads");
  TORCH_CHECK(s.s >= s.t, "attention: ", s.s, " keys for ", s.t, " queries");
  s.n_rep = s.h / s.kv;
  s.offset = s.s - s.t;
  return s;
}

// fp32 with unit stride in the last dimension (other strides kept: no copy when already so).
at::Tensor float_rows(const at::Tensor& t) {
  auto f = t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
  return f.stride(-1) == 1 ? f : f.contiguous();
}

class FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v) {
    auto [out, lse] = fused_attention_forward(q, k, v);
    ctx->save_for_backward({q, k, v, out, lse});
    return out.transpose(1, 2);  // (B, H, T, hd), a view: wo reads (B, T, H * hd) for free
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& q = saved[0];
    const auto& k = saved[1];
    const auto& v = saved[2];
    const Shapes sh = check_shapes(q, k, v);
    const auto qf = float_rows(q), kf = float_rows(k), vf = float_rows(v);
    const auto of = saved[3].to(at::kFloat).contiguous();  // (B, T, H, hd)
    const auto lse = saved[4];                            // (B, H, T)
    const auto dof = float_rows(grads[0]);                 // (B, H, T, hd)
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    auto dq = at::zeros({sh.b, sh.t, sh.h, sh.hd}, f32);
    auto dk = at::zeros({sh.b, sh.kv, sh.s, sh.hd}, f32);
    auto dv = at::zeros({sh.b, sh.kv, sh.s, sh.hd}, f32);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sh.hd)));

    const float* qp = qf.data_ptr<float>();
    const float* kp = kf.data_ptr<float>();
    const float* vp = vf.data_ptr<float>();
    const float* op = of.data_ptr<float>();
    const float* dop = dof.data_ptr<float>();
    const float* lp = lse.data_ptr<float>();
    float* dqp = dq.data_ptr<float>();
    float* dkp = dk.data_ptr<float>();
    float* dvp = dv.data_ptr<float>();
    // One task per (batch, kv head): it owns that head's dk and dv rows, and the dq rows of the
    // n_rep query heads reading it, so no two threads write the same memory.
    at::parallel_for(0, sh.b * sh.kv, 1, [&](int64_t begin, int64_t end) {
      KeyScores keys(sh.s, sh.hd), values(sh.s, sh.hd);
      RankOneRows dk_rows(sh.s, sh.hd), dv_rows(sh.s, sh.hd);
      std::vector<float> p(padded(sh.s)), dp(padded(sh.s));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / sh.kv, g = task % sh.kv;
        const float* kg = kp + b * kf.stride(0) + g * kf.stride(1);
        const float* vg = vp + b * vf.stride(0) + g * vf.stride(1);
        keys.set(kg, kf.stride(2));
        values.set(vg, vf.stride(2));
        dk_rows.start(dkp + task * sh.s * sh.hd);
        dv_rows.start(dvp + task * sh.s * sh.hd);
        for (int64_t r = 0; r < sh.n_rep; ++r) {
          const int64_t h = g * sh.n_rep + r;
          for (int64_t i = 0; i < sh.t; ++i) {
            const int64_t n = sh.offset + i + 1;
            const float* qi = qp + b * qf.stride(0) + h * qf.stride(1) + i * qf.stride(2);
            const float* doi = dop + b * dof.stride(0) + h * dof.stride(1) + i * dof.stride(2);
            const float* oi = op + ((b * sh.t + i) * sh.h + h) * sh.hd;
            float delta = 0.0f;  // rowsum(dO * O) = sum_j p_j dp_j
            for (int64_t d = 0; d < sh.hd; ++d) delta += doi[d] * oi[d];
            keys.row(qi, n, scale, p.data());
            values.row(doi, n, 1.0f, dp.data());
            softmax_grad_row(p.data(), dp.data(), n, lp[(b * sh.h + h) * sh.t + i], delta);
            float* dqi = dqp + ((b * sh.t + i) * sh.h + h) * sh.hd;
            weighted_rows(dp.data(), kg, kf.stride(2), n, sh.hd, scale, dqi);
            dk_rows.add(dp.data(), qi, n, scale);
            dv_rows.add(p.data(), doi, n, 1.0f);
          }
        }
        dk_rows.finish();
        dv_rows.finish();
      }
    });
    return {dq.transpose(1, 2).to(q.scalar_type()), dk.to(k.scalar_type()),
            dv.to(v.scalar_type())};
  }
};

AttentionKernel kernel_override(bool* set) {
  static const std::pair<bool, AttentionKernel> from_env = [] {
    const char* value = std::getenv("LLT_ATTENTION");
    if (value == nullptr || *value == '\0') return std::make_pair(false, AttentionKernel::kFused);
    const std::string v(value);
    if (v == "fused") return std::make_pair(true, AttentionKernel::kFused);
    if (v == "reference") return std::make_pair(true, AttentionKernel::kReference);
    throw InputError("LLT_ATTENTION: expected fused or reference, got '" + v + "'");
  }();
  *set = from_env.first;
  return from_env.second;
}

bool sdpa_available() {
#if LLT_TORCH_AT_LEAST(2, 0)
  return true;
#else
  return false;
#endif
}

}  // namespace

std::string attention_kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::kFused:
      return "fused";
    case AttentionKernel::kSdpa:
      return "sdpa";
    case AttentionKernel::kReference:
      return "reference";
  }
  return "?";
}

AttentionKernel attention_kernel_for(const c10::Device& device, bool cache_offset) {
  bool set = false;
  const auto forced = kernel_override(&set);
  if (set) {
    if (forced == AttentionKernel::kFused && !device.is_cpu()) {
      throw InputError("LLT_ATTENTION=fused: the fused kernel runs on CPU only");
    }
    return forced;
  }
  if (device.is_cpu()) return AttentionKernel::kFused;
  if (device.is_cuda() && sdpa_available() && !cache_offset) return AttentionKernel::kSdpa;
  return AttentionKernel::kReference;
}

bool attention_saves_scores(const c10::Device& device) {
  return attention_kernel_for(device, /*cache_offset=*/false) == AttentionKernel::kReference;
}

std::pair<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v) {
  const Shapes sh = check_shapes(q, k, v);
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "the fused attention kernel runs on CPU tensors");
  at::NoGradGuard no_grad;
  const auto qf = float_rows(q), kf = float_rows(k), vf = float_rows(v);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto out = at::zeros({sh.b, sh.t, sh.h, sh.hd}, f32);
  auto lse = at::empty({sh.b, sh.h, sh.t}, f32);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sh.hd)));

  const float* qp = qf.data_ptr<float>();
  const float* kp = kf.data_ptr<float>();
  const float* vp = vf.data_ptr<float>();
  float* outp = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  // One task per (batch, kv head): the head's keys are transposed once and serve its n_rep
  // query heads.
  at::parallel_for(0, sh.b * sh.kv, 1, [&](int64_t begin, int64_t end) {
    KeyScores keys(sh.s, sh.hd);
    std::vector<float> s(padded(sh.s));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / sh.kv, g = task % sh.kv;
      keys.set(kp + b * kf.stride(0) + g * kf.stride(1), kf.stride(2));
      const float* vg = vp + b * vf.stride(0) + g * vf.stride(1);
      for (int64_t r = 0; r < sh.n_rep; ++r) {
        const int64_t h = g * sh.n_rep + r;
        for (int64_t i = 0; i < sh.t; ++i) {
          const int64_t n = sh.offset + i + 1;  // keys 0 .. offset + i
          const float* qi = qp + b * qf.stride(0) + h * qf.stride(1) + i * qf.stride(2);
          keys.row(qi, n, scale, s.data());
          const float m = row_max(s.data(), n);
          const float l = exp_shift_sum(s.data(), n, m);
          float* oi = outp + ((b * sh.t + i) * sh.h + h) * sh.hd;
          weighted_rows(s.data(), vg, vf.stride(2), n, sh.hd, 1.0f / l, oi);
          lp[(b * sh.h + h) * sh.t + i] = m + std::log(l);
        }
      }
    }
  });
  if (q.scalar_type() != at::kFloat) out = out.to(q.scalar_type());
  return {out, lse};
}

at::Tensor causal_attention_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return FusedAttentionFunction::apply(q, k, v);
}

at::Tensor causal_mask(int64_t t, int64_t start, const c10::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  // Query i (position start+i) may attend to keys j <= start+i.
  return at::full({t, start + t}, -std::numeric_limits<float>::infinity(), opts)
      .triu(/*diagonal=*/start + 1);
}

at::Tensor causal_attention_reference(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v) {
  const Shapes sh = check_shapes(q, k, v);
  // Query head h = g * n_rep + r reads kv head g: the n_rep query heads of a group are stacked
  // as rows, (B, KV, n_rep * T, hd), so keys are not copied per query head (Meta's repeat_kv).
  const auto qg = q.reshape({sh.b, sh.kv, sh.n_rep * sh.t, sh.hd});
  auto scores = at::matmul(qg, k.transpose(2, 3)) / std::sqrt(static_cast<double>(sh.hd));
  if (sh.t > 1) {  // (B, KV, n_rep * T, S): the (T, S) causal mask repeated for each query head
    scores = scores + causal_mask(sh.t, sh.offset, q.device()).repeat({sh.n_rep, 1});
  }
  // Softmax in fp32 (the mask may already have promoted bf16 scores to fp32).
  auto probs = at::softmax(scores.scalar_type() == at::kFloat ? scores : scores.to(at::kFloat),
                           /*dim=*/-1);
  if (q.scalar_type() != at::kFloat) probs = probs.to(q.scalar_type());
  return at::matmul(probs, v).view({sh.b, sh.h, sh.t, sh.hd});
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const bool cache_offset = k.size(2) != q.size(2);
  switch (attention_kernel_for(q.device(), cache_offset)) {
    case AttentionKernel::kFused:
      return causal_attention_fused(q, k, v);
    case AttentionKernel::kSdpa: {
#if LLT_TORCH_AT_LEAST(2, 0)
      const Shapes sh = check_shapes(q, k, v);
      const auto kk = sh.n_rep > 1 ? k.repeat_interleave(sh.n_rep, /*dim=*/1) : k;
      const auto vv = sh.n_rep > 1 ? v.repeat_interleave(sh.n_rep, /*dim=*/1) : v;
      return at::scaled_dot_product_attention(q, kk, vv, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                              /*is_causal=*/sh.t > 1);
#else
      break;
#endif
    }
    case AttentionKernel::kReference:
      break;
  }
  return causal_attention_reference(q, k, v);
}

}  // namespace llt
