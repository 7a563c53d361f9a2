// Fused CPU kernels of petl's linear spline unit: relu(x) + linear interpolation of knot values, optionally
// clamped from above (the ReLU6 slot); forward and backward each one pass over the elements.
//
// Same arithmetic as petl._spline_function's autograd form, element by element:
//   u = (x + range) / step, left = clamp(floor(u), 0, K - 2), frac = u - left,
//   pre = relu(x) + (frac * (c[left + 1] - c[left]) + c[left]), out = min(pre, upper)
// (a NaN input takes segment 0 and stays NaN). The backward recomputes the segment from x (only x is saved).
//
// Layout: (outer, C, inner) blocks as blocks.h walks them. Each inner loop is a plain loop the compiler
// vectorises (table lookups become gathers; float32 with one short table row uses in-register permutes
// instead, forward_avx2 / backward_avx2).
// The coefficient gradient is a scatter-add, per thread, into kCopies interleaved copies of the table (a run of
// elements in one segment would otherwise chain every add through one memory word), from small buffers filled
// by the vectorised part: a chunk of kChunk elements is summed in the input's precision (for a short row, on
// the stack), chunks and threads in double, in a fixed order (deterministic for a fixed thread count).
#include "blocks.h"

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int kCopies = 4;
constexpr int64_t kChunk = 1024;
constexpr int32_t kLocalTable = 64;   // rows up to this many knots are summed per chunk on the stack

template <typename T>
struct Spline {
  const T* coef;   // (C, K) row-major
  const T* slope;  // (C, K): c[j + 1] - c[j], 0 in the last column
  int32_t k;
  T range, step, last, upper;
};

template <typename T>
inline T segment(T v, T range, T step, T last, int32_t& left) {
  const T u = (v + range) / step;
  T l = std::floor(u);
  l = l >= T(0) ? l : T(0);
  l = l < last ? l : last;
  left = static_cast<int32_t>(l);
  return u - l;
}

#if defined(__AVX2__)
// float32, one table row of K <= 24 values (a unit shared by every channel, or one channel's run): the lookups
// as three in-register permutes and two blends instead of gathers, which are slow on many x86 cores. Same
// operations, same order, same rounding as the scalar code (the selects reproduce its NaN and -0 cases).
constexpr int32_t kRegisterTable = 24;

struct RegisterTable {
  __m256 lo, mid, hi;
  explicit RegisterTable(const float* row, int32_t k) {
    alignas(32) float pad[kRegisterTable] = {0};
    for (int32_t j = 0; j < k; ++j) pad[j] = row[j];
    lo = _mm256_load_ps(pad);
    mid = _mm256_load_ps(pad + 8);
    hi = _mm256_load_ps(pad + 16);
  }
  __m256 operator()(__m256i i, __m256 from8, __m256 from16) const {
    const __m256 r = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i), _mm256_permutevar8x32_ps(mid, i), from8);
    return _mm256_blendv_ps(r, _mm256_permutevar8x32_ps(hi, i), from16);
  }
};

struct Lanes {
  __m256 frac, slope, coef;
  __m256i left;
};

inline Lanes segment8(__m256 v, const RegisterTable& coef, const RegisterTable& slope, __m256 range, __m256 step,
                      __m256 last) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 u = _mm256_div_ps(_mm256_add_ps(v, range), step);
  __m256 l = _mm256_floor_ps(u);
  l = _mm256_blendv_ps(zero, l, _mm256_cmp_ps(l, zero, _CMP_GE_OQ));   // l >= 0 ? l : 0 (NaN -> 0)
  l = _mm256_min_ps(l, last);                                          // l < last ? l : last
  const __m256i i = _mm256_cvttps_epi32(l);
  const __m256 from8 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7)));
  const __m256 from16 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(15)));
  return {_mm256_sub_ps(u, l), slope(i, from8, from16), coef(i, from8, from16), i};
}

inline __m256 pre8(__m256 v, const Lanes& s) {   // (v > 0 ? v : 0) + (frac * slope + coef)
  return _mm256_add_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_add_ps(_mm256_mul_ps(s.frac, s.slope), s.coef));
}

// Elements [0, returned) of the block done in 8-lane steps (0 where the register table does not apply).
template <bool kClamped>
int64_t forward_avx2(const float* x, float* out, int64_t len, const Spline<float>& s) {
  if (s.k > kRegisterTable || len < 8) return 0;   // (building the tables costs more than a short block)
  const RegisterTable coef(s.coef, s.k), slope(s.slope, s.k);
  const __m256 range = _mm256_set1_ps(s.range), step = _mm256_set1_ps(s.step), last = _mm256_set1_ps(s.last),
               upper = _mm256_set1_ps(s.upper);
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    const __m256 v = _mm256_loadu_ps(x + t);
    __m256 pre = pre8(v, segment8(v, coef, slope, range, step, last));
    if (kClamped) pre = _mm256_blendv_ps(pre, upper, _mm256_cmp_ps(pre, upper, _CMP_GT_OQ));   // NaN stays
    _mm256_storeu_ps(out + t, pre);
  }
  return t;
}

template <bool kClamped, bool kGradX>
int64_t backward_avx2(const float* x, const float* grad, float* grad_x, int32_t* index, float* gain, float* right,
                      int64_t n, const Spline<float>& s) {
  if (s.k > kRegisterTable || n < 8) return 0;   // (building the tables costs more than a short block)
  const RegisterTable coef(s.coef, s.k), slope(s.slope, s.k);
  const __m256 range = _mm256_set1_ps(s.range), step = _mm256_set1_ps(s.step), last = _mm256_set1_ps(s.last),
               upper = _mm256_set1_ps(s.upper), zero = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 v = _mm256_loadu_ps(x + t);
    const Lanes seg = segment8(v, coef, slope, range, step, last);
    __m256 g = _mm256_loadu_ps(grad + t);
    if (kClamped) g = _mm256_and_ps(g, _mm256_cmp_ps(pre8(v, seg), upper, _CMP_LT_OQ));   // pre < upper ? g : 0
    if (kGradX) {
      const __m256 through = _mm256_div_ps(_mm256_mul_ps(g, seg.slope), step);
      _mm256_storeu_ps(grad_x + t, _mm256_add_ps(through, _mm256_and_ps(g, _mm256_cmp_ps(v, zero, _CMP_GT_OQ))));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + t), seg.left);
    _mm256_storeu_ps(gain + t, g);
    _mm256_storeu_ps(right + t, _mm256_mul_ps(g, seg.frac));
  }
  return t;
}
#endif

// One block of `len` elements; kPerElement: element t is in channel t (a channels_last row), else all in one
// channel whose table row `s` already points at. The fields are copied into locals and the pointers are
// __restrict so that the loop vectorises (a store through `out` could otherwise alias `s`).
template <typename T, bool kPerElement, bool kClamped>
void forward_block(const T* __restrict x, T* __restrict out, int64_t len, const Spline<T>& s) {
  const T* __restrict coef = s.coef;
  const T* __restrict slope = s.slope;
  const int32_t k = s.k;
  const T range = s.range, step = s.step, last = s.last, upper = s.upper;
  int64_t t = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float> && !kPerElement) t = forward_avx2<kClamped>(x, out, len, s);
#endif
  for (; t < len; ++t) {
    int32_t i;
    const T v = x[t];
    const T f = segment(v, range, step, last, i);
    if (kPerElement) i += static_cast<int32_t>(t) * k;
    const T pre = (v > T(0) ? v : T(0)) + (f * slope[i] + coef[i]);
    out[t] = kClamped ? (pre > upper ? upper : pre) : pre;
  }
}

template <typename T, bool kPerElement, bool kClamped, bool kGradX>
void backward_block(const T* __restrict x, const T* __restrict grad, T* __restrict grad_x, double* acc,
                    int64_t table, int64_t len, const Spline<T>& s) {
  const T* __restrict coef = s.coef;
  const T* __restrict slope = s.slope;
  const int32_t k = s.k;
  const T range = s.range, step = s.step, last = s.last, upper = s.upper;
  int32_t index[kChunk];
  T gain[kChunk], right[kChunk];
  for (int64_t start = 0; start < len; start += kChunk) {
    const int64_t n = len - start < kChunk ? len - start : kChunk;
    const T* __restrict xs = x + start;
    const T* __restrict gs = grad + start;
    T* __restrict gx = kGradX ? grad_x + start : nullptr;
    int64_t t = 0;
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float> && !kPerElement)
      t = backward_avx2<kClamped, kGradX>(xs, gs, gx, index, gain, right, n, s);
#endif
    for (; t < n; ++t) {                             // vectorised: segment, clamp mask, input gradient
      int32_t i;
      const T v = xs[t];
      const T f = segment(v, range, step, last, i);
      if (kPerElement) i += static_cast<int32_t>(start + t) * k;
      T g = gs[t];
      if (kClamped) {
        const T pre = (v > T(0) ? v : T(0)) + (f * slope[i] + coef[i]);
        g = pre < upper ? g : T(0);   // torch.clamp passes no gradient at the bound
      }
      if (kGradX) gx[t] = (g * slope[i]) / step + (v > T(0) ? g : T(0));
      index[t] = i;
      gain[t] = g;
      right[t] = g * f;
    }
    // scalar scatter-add: d out / d c[i] = 1 - frac, d out / d c[i + 1] = frac
    if (acc && !kPerElement && k <= kLocalTable) {   // one short row: sum the chunk in float on the stack first
      T local[kCopies][kLocalTable] = {};
      for (int64_t t = 0; t < n; ++t) {
        T* copy = local[t % kCopies] + index[t];
        const T r = right[t];
        copy[0] += gain[t] - r;
        copy[1] += r;
      }
      for (int c = 0; c < kCopies; ++c)
        for (int32_t j = 0; j < k; ++j) acc[c * table + j] += static_cast<double>(local[c][j]);
    } else if (acc) {
      for (int64_t t = 0; t < n; ++t) {
        double* copy = acc + (t % kCopies) * table + index[t];
        const double r = static_cast<double>(right[t]);
        copy[0] += static_cast<double>(gain[t]) - r;
        copy[1] += r;
      }
    }
  }
}

void check(const torch::Tensor& x, const torch::Tensor& coef, int64_t inner) {
  TORCH_CHECK(x.device().is_cpu() && coef.device().is_cpu(), "spline_cpu: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == coef.scalar_type(), "spline_cpu: x and coefficients must share a dtype");
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) >= 2 && coef.is_contiguous(), "spline_cpu: coefficients (C, K)");
  TORCH_CHECK(coef.numel() < (int64_t(1) << 30), "spline_cpu: coefficient table too large");
  petl::check_layout(x, coef.size(0), inner, "spline_cpu");
}

template <typename T>
std::vector<T> slopes_of(const T* coef, int64_t channels, int64_t k) {
  std::vector<T> slopes(channels * k, T(0));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t j = 0; j + 1 < k; ++j) slopes[c * k + j] = coef[c * k + j + 1] - coef[c * k + j];
  return slopes;
}

}  // namespace

torch::Tensor spline_forward(torch::Tensor x, torch::Tensor coef, int64_t inner, double range, double step,
                             double upper) {
  check(x, coef, inner);
  auto out = at::empty_like(x);
  const bool clamped = std::isfinite(upper);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spline_forward", [&] {
    using T = scalar_t;
    const int64_t channels = coef.size(0), k = coef.size(1);
    const T* c = coef.data_ptr<T>();
    const auto slopes = slopes_of(c, channels, k);
    const Spline<T> base{c, slopes.data(), static_cast<int32_t>(k), static_cast<T>(range), static_cast<T>(step),
                         static_cast<T>(k - 2), static_cast<T>(clamped ? upper : 0.0)};
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    petl::for_blocks(x.numel(), channels, inner, [&](int64_t off, int64_t len, bool per_element, int64_t ch) {
      Spline<T> s = base;
      s.coef += ch * k;
      s.slope += ch * k;
      if (per_element) {
        clamped ? forward_block<T, true, true>(xp + off, op + off, len, s)
                : forward_block<T, true, false>(xp + off, op + off, len, s);
      } else {
        clamped ? forward_block<T, false, true>(xp + off, op + off, len, s)
                : forward_block<T, false, false>(xp + off, op + off, len, s);
      }
    });
  });
  return out;
}

std::vector<torch::Tensor> spline_backward(torch::Tensor x, torch::Tensor coef, torch::Tensor grad, int64_t inner,
                                           double range, double step, double upper, bool need_x, bool need_c) {
  check(x, coef, inner);
  petl::check_grad(x, grad, "spline_cpu");
  auto grad_x = need_x ? at::empty_like(x) : torch::Tensor();
  auto grad_c = at::zeros(coef.sizes(), coef.options().dtype(at::kDouble));
  const bool clamped = std::isfinite(upper);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spline_backward", [&] {
    using T = scalar_t;
    const int64_t channels = coef.size(0), k = coef.size(1), table = channels * k;
    const T* c = coef.data_ptr<T>();
    const auto slopes = slopes_of(c, channels, k);
    const Spline<T> base{c, slopes.data(), static_cast<int32_t>(k), static_cast<T>(range), static_cast<T>(step),
                         static_cast<T>(k - 2), static_cast<T>(clamped ? upper : 0.0)};
    const int threads = at::get_num_threads();
    std::vector<double> partial(need_c ? static_cast<size_t>(threads) * kCopies * table : 0, 0.0);
    const T* xp = x.data_ptr<T>();
    const T* gp = grad.data_ptr<T>();
    T* gxp = need_x ? grad_x.data_ptr<T>() : nullptr;
    petl::for_blocks(x.numel(), channels, inner, [&](int64_t off, int64_t len, bool per_element, int64_t ch) {
      Spline<T> s = base;
      s.coef += ch * k;
      s.slope += ch * k;
      const int thread = at::get_thread_num();      // run inline (thread 0 ..) when called inside a parallel region
      TORCH_CHECK(thread < threads, "spline_cpu: thread ", thread, " outside the ", threads, " partial sums");
      double* acc = need_c ? partial.data() + static_cast<size_t>(thread) * kCopies * table + ch * k : nullptr;
      T* gx = gxp ? gxp + off : nullptr;
      const T* xo = xp + off;
      const T* go = gp + off;
      // template flags: per-element channel, clamped, input gradient wanted
      if (per_element) {
        if (clamped) gx ? backward_block<T, true, true, true>(xo, go, gx, acc, table, len, s)
                        : backward_block<T, true, true, false>(xo, go, gx, acc, table, len, s);
        else gx ? backward_block<T, true, false, true>(xo, go, gx, acc, table, len, s)
                : backward_block<T, true, false, false>(xo, go, gx, acc, table, len, s);
      } else {
        if (clamped) gx ? backward_block<T, false, true, true>(xo, go, gx, acc, table, len, s)
                        : backward_block<T, false, true, false>(xo, go, gx, acc, table, len, s);
        else gx ? backward_block<T, false, false, true>(xo, go, gx, acc, table, len, s)
                : backward_block<T, false, false, false>(xo, go, gx, acc, table, len, s);
      }
    });
    if (need_c) {
      double* out = grad_c.data_ptr<double>();
      for (int64_t copy = 0; copy < static_cast<int64_t>(threads) * kCopies; ++copy)
        for (int64_t j = 0; j < table; ++j) out[j] += partial[static_cast<size_t>(copy) * table + j];
    }
  });
  return {grad_x, grad_c.to(coef.scalar_type())};
}
