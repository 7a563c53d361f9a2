// Fused CPU kernels of petl's rational (safe Pade) and ACON-C units, optionally clamped from above (the ReLU6
// slot): forward and backward each one pass over the elements; only x is saved for the backward.
//
// Same arithmetic as the units' autograd forms in petl/activations.py, element by element:
//   rational: xc = clamp(x, -c, c), P = Horner(a5 .. a0; xc), Q = 1 + |xc| Horner(|b4| .. |b1|; |xc|),
//             pre = P / Q + relu(x - c)
//   acon_c:   d = (p1 - p2) x, pre = d sigmoid(beta d) + p2 x
//   out = min(pre, upper)
// The backward is the closed-form derivative, recomputed from x. Parameters come as a (P, C) table, row j the
// j-th parameter of every channel, so that a channels_last row of C elements reads each parameter contiguously.
// Parameter gradients are summed in double (backward_block), then per thread in a fixed order (deterministic
// for a fixed thread count).
#include "blocks.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(x) in float32 as straight-line arithmetic the compiler vectorises (std::exp would be one libm call per
// element): Cephes' expf -- n = round(x / ln 2), r = x - n ln 2 in two parts, a degree-5 polynomial, times
// 2^n by exponent bits; within 2 ulp of the exact value. The argument is clamped to [-60, 60]: the sigmoid
// below then lies in [8.8e-27, 1] and its products with activations and gradients stay normal numbers, where
// exact values would be subnormal, on which x86 arithmetic runs ~100x slower (ACON-C's init beta = 100 puts
// most elements there). The clamp changes a sigmoid value by at most 8.8e-27. float64 uses std::exp.
inline float exp_vec(float x) {
  x = x > 60.0f ? 60.0f : x;
  x = x < -60.0f ? -60.0f : x;
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  n = n == n ? n : 0.0f;                               // NaN stays NaN through r; the integer cast must not see it
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline double exp_vec(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T z) { return T(1) / (T(1) + exp_vec(-z)); }

// sigmoid(z) and its derivative s (1 - s). For z >= 0, 1 - s cancels (s rounds towards 1) and s (1 - s) is taken
// as e s^2 with e = exp(-z), which is the same quantity without the cancellation; for z < 0 (s small, 1 - s
// exact enough, e large) as s (1 - s).
template <typename T>
inline void sigmoid_and_slope(T z, T& s, T& slope) {
  const T e = exp_vec(-z);
  s = T(1) / (T(1) + e);
  slope = z >= T(0) ? (e * s) * s : s * (T(1) - s);
}

// Safe Pade unit of degrees (5, 4); parameters a0 .. a5, b1 .. b4; `c` is the fit range.
struct Rational {
  static constexpr int kParams = 10;

  template <typename T>
  static T forward(T v, const T* p, T c) {
    T xc = v < -c ? -c : v;
    xc = xc > c ? c : xc;
    T num = p[5];
    for (int j = 4; j >= 0; --j) num = num * xc + p[j];
    const T ax = std::abs(xc);
    T q = std::abs(p[9]);
    for (int j = 8; j >= 6; --j) q = q * ax + std::abs(p[j]);
    const T above = v - c;
    return num / (T(1) + q * ax) + (above > T(0) ? above : T(0));
  }

  // g d out / d x; writes g d out / d p_j into dp, for b_k with respect to |b_k| (the caller multiplies by
  // sign(b_k): a select on a parameter inside the loop keeps it from vectorising).
  template <typename T>
  static T backward(T v, T g, const T* p, T c, T* dp) {
    T xc = v < -c ? -c : v;
    xc = xc > c ? c : xc;
    T num = p[5], dnum = T(5) * p[5];
    for (int j = 4; j >= 0; --j) num = num * xc + p[j];
    for (int j = 4; j >= 1; --j) dnum = dnum * xc + T(j) * p[j];
    const T ax = std::abs(xc);
    const T sx = xc > T(0) ? T(1) : (xc < T(0) ? T(-1) : T(0));
    T q = std::abs(p[9]), dq = T(4) * std::abs(p[9]);
    for (int j = 8; j >= 6; --j) q = q * ax + std::abs(p[j]);
    for (int j = 8; j >= 6; --j) dq = dq * ax + T(j - 5) * std::abs(p[j]);
    const T inv = T(1) / (T(1) + q * ax);
    const T ratio = num * inv;
    const T inside = (v > -c && v < c) ? T(1) : T(0);      // torch.clamp passes the gradient on (-c, c) only
    const T gx = g * (inside * ((dnum - ratio * dq * sx) * inv)) + (v - c > T(0) ? g : T(0));
    T w = g * inv;                                          // d out / d a_k = xc^k / Q
    for (int j = 0; j <= 5; ++j, w = w * xc) dp[j] = w;
    T u = -g * ratio * inv;                                 // d out / d |b_k| = -P / Q^2 |xc|^k
    for (int j = 6; j <= 9; ++j) {
      u = u * ax;
      dp[j] = u;
    }
    return gx;
  }
};

// ACON-C; parameters p1, p2, beta.
struct AconC {
  static constexpr int kParams = 3;

  template <typename T>
  static T forward(T v, const T* p, T) {
    const T d = (p[0] - p[1]) * v;
    return d * sigmoid(p[2] * d) + p[1] * v;
  }

  template <typename T>
  static T backward(T v, T g, const T* p, T, T* dp) {
    const T diff = p[0] - p[1];
    const T d = diff * v;
    T s, slope;
    sigmoid_and_slope(p[2] * d, s, slope);
    const T h = s + d * slope * p[2];                       // d out / d d
    const T gh = g * h;
    dp[0] = gh * v;
    dp[1] = g * v - gh * v;
    dp[2] = g * (d * d * slope);
    return gh * diff + g * p[1];
  }
};

template <typename T, typename Unit>
inline void load(T* p, const T* __restrict params, int64_t stride, int64_t t) {
#pragma GCC unroll 16
  for (int j = 0; j < Unit::kParams; ++j) p[j] = params[j * stride + t];
}

// One block of `len` elements; kPerElement: element t is in channel t (params column t), else params column 0,
// read once before the loop (a load inside the loop keeps it from vectorising).
template <typename T, typename Unit, bool kPerElement, bool kClamped>
void forward_block(const T* __restrict x, T* __restrict out, int64_t len, const T* __restrict params,
                   int64_t stride, T constant, T upper) {
  T shared[Unit::kParams];
  load<T, Unit>(shared, params, stride, 0);
  for (int64_t t = 0; t < len; ++t) {
    T own[Unit::kParams];
    if constexpr (kPerElement) load<T, Unit>(own, params, stride, t);
    const T pre = Unit::forward(x[t], kPerElement ? own : shared, constant);
    out[t] = kClamped ? (pre > upper ? upper : pre) : pre;
  }
}

// acc: this thread's (P, stride) double sums, offset to the block's channel (nullptr: no parameter gradient).
// Per chunk of kChunk elements, one vectorised loop writes the input gradient and each element's parameter
// gradient terms into a buffer (one row per parameter); the rows are then summed in double, per channel for a
// channels_last row, else per parameter with a simd reduction (both in a fixed order).
constexpr int64_t kChunk = 256;

template <typename T, typename Unit, bool kPerElement, bool kClamped, bool kGradX>
void backward_block(const T* __restrict x, const T* __restrict grad, T* __restrict grad_x, double* __restrict acc,
                    int64_t len, const T* __restrict params, int64_t stride, T constant, T upper) {
  constexpr int kP = Unit::kParams;
  T shared[kP];
  load<T, Unit>(shared, params, stride, 0);
  T terms[kP][kChunk];
  for (int64_t start = 0; start < len; start += kChunk) {
    const int64_t n = len - start < kChunk ? len - start : kChunk;
    const T* __restrict xs = x + start;
    const T* __restrict gs = grad + start;
    for (int64_t t = 0; t < n; ++t) {
      T own[kP];
      if constexpr (kPerElement) load<T, Unit>(own, params, stride, start + t);
      const T* p = kPerElement ? own : shared;
      const T v = xs[t];
      T g = gs[t];
      if (kClamped) g = Unit::forward(v, p, constant) < upper ? g : T(0);   // torch.clamp: none at the bound
      T dp[kP];
      const T gx = Unit::backward(v, g, p, constant, dp);
      if (kGradX) grad_x[start + t] = gx;
#pragma GCC unroll 16
      for (int j = 0; j < kP; ++j) terms[j][t] = dp[j];
    }
    if (!acc) continue;
    for (int j = 0; j < kP; ++j) {
      const T* __restrict row = terms[j];
      if constexpr (kPerElement) {
        double* __restrict out = acc + j * stride + start;
        for (int64_t t = 0; t < n; ++t) out[t] += static_cast<double>(row[t]);
      } else {
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < n; ++t) sum += static_cast<double>(row[t]);
        acc[j * stride] += sum;
      }
    }
  }
}

void check_params(const torch::Tensor& x, const torch::Tensor& params, int64_t count, const char* kernel) {
  TORCH_CHECK(params.device().is_cpu(), kernel, ": CPU tensors only");
  TORCH_CHECK(x.scalar_type() == params.scalar_type(), kernel, ": x and parameters must share a dtype");
  TORCH_CHECK(params.dim() == 2 && params.size(0) == count && params.is_contiguous(), kernel,
              ": parameters must be a contiguous (", count, ", C) table");
}

template <typename Unit>
torch::Tensor unit_forward(const torch::Tensor& x, const torch::Tensor& params, int64_t inner, double constant,
                           double upper, const char* kernel) {
  check_params(x, params, Unit::kParams, kernel);
  const int64_t channels = params.size(1);
  petl::check_layout(x, channels, inner, kernel);
  auto out = at::empty_like(x);
  const bool clamped = std::isfinite(upper);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "units_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* pp = params.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const T c = static_cast<T>(constant), u = static_cast<T>(clamped ? upper : 0.0);
    petl::for_blocks(x.numel(), channels, inner, [&](int64_t off, int64_t len, bool per_element, int64_t ch) {
      if (per_element) {
        clamped ? forward_block<T, Unit, true, true>(xp + off, op + off, len, pp, channels, c, u)
                : forward_block<T, Unit, true, false>(xp + off, op + off, len, pp, channels, c, u);
      } else {
        clamped ? forward_block<T, Unit, false, true>(xp + off, op + off, len, pp + ch, channels, c, u)
                : forward_block<T, Unit, false, false>(xp + off, op + off, len, pp + ch, channels, c, u);
      }
    });
  });
  return out;
}

template <typename Unit>
std::vector<torch::Tensor> unit_backward(const torch::Tensor& x, const torch::Tensor& params,
                                         const torch::Tensor& grad, int64_t inner, double constant, double upper,
                                         bool need_x, bool need_params, const char* kernel) {
  check_params(x, params, Unit::kParams, kernel);
  const int64_t channels = params.size(1);
  petl::check_layout(x, channels, inner, kernel);
  petl::check_grad(x, grad, kernel);
  auto grad_x = need_x ? at::empty_like(x) : torch::Tensor();
  auto grad_p = at::zeros(params.sizes(), params.options().dtype(at::kDouble));
  const bool clamped = std::isfinite(upper);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "units_cpu", [&] {
    using T = scalar_t;
    const int64_t table = Unit::kParams * channels;
    const int threads = at::get_num_threads();
    std::vector<double> partial(need_params ? static_cast<size_t>(threads) * table : 0, 0.0);
    const T* xp = x.data_ptr<T>();
    const T* gp = grad.data_ptr<T>();
    const T* pp = params.data_ptr<T>();
    T* gxp = need_x ? grad_x.data_ptr<T>() : nullptr;
    const T c = static_cast<T>(constant), u = static_cast<T>(clamped ? upper : 0.0);
    petl::for_blocks(x.numel(), channels, inner, [&](int64_t off, int64_t len, bool per_element, int64_t ch) {
      const int thread = at::get_thread_num();      // run inline (thread 0 ..) when called inside a parallel region
      TORCH_CHECK(thread < threads, kernel, ": thread ", thread, " outside the ", threads, " partial sums");
      double* acc = need_params ? partial.data() + static_cast<size_t>(thread) * table + ch : nullptr;
      const T* xo = xp + off;
      const T* go = gp + off;
      T* gx = gxp ? gxp + off : nullptr;
      const T* po = pp + ch;
      // template flags: per-element channel, clamped, input gradient wanted
      if (per_element) {
        if (clamped) gx ? backward_block<T, Unit, true, true, true>(xo, go, gx, acc, len, po, channels, c, u)
                        : backward_block<T, Unit, true, true, false>(xo, go, gx, acc, len, po, channels, c, u);
        else gx ? backward_block<T, Unit, true, false, true>(xo, go, gx, acc, len, po, channels, c, u)
                : backward_block<T, Unit, true, false, false>(xo, go, gx, acc, len, po, channels, c, u);
      } else {
        if (clamped) gx ? backward_block<T, Unit, false, true, true>(xo, go, gx, acc, len, po, channels, c, u)
                        : backward_block<T, Unit, false, true, false>(xo, go, gx, acc, len, po, channels, c, u);
        else gx ? backward_block<T, Unit, false, false, true>(xo, go, gx, acc, len, po, channels, c, u)
                : backward_block<T, Unit, false, false, false>(xo, go, gx, acc, len, po, channels, c, u);
      }
    });
    if (need_params) {
      double* out = grad_p.data_ptr<double>();
      for (int thread = 0; thread < threads; ++thread)
        for (int64_t j = 0; j < table; ++j) out[j] += partial[static_cast<size_t>(thread) * table + j];
    }
  });
  return {grad_x, grad_p.to(params.scalar_type())};
}

}  // namespace

torch::Tensor rational_forward(torch::Tensor x, torch::Tensor params, int64_t inner, double fit_range,
                               double upper) {
  return unit_forward<Rational>(x, params, inner, fit_range, upper, "rational_cpu");
}

std::vector<torch::Tensor> rational_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad,
                                             int64_t inner, double fit_range, double upper, bool need_x,
                                             bool need_params) {
  return unit_backward<Rational>(x, params, grad, inner, fit_range, upper, need_x, need_params, "rational_cpu");
}

torch::Tensor acon_forward(torch::Tensor x, torch::Tensor params, int64_t inner, double upper) {
  return unit_forward<AconC>(x, params, inner, 0.0, upper, "acon_cpu");
}

std::vector<torch::Tensor> acon_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad, int64_t inner,
                                         double upper, bool need_x, bool need_params) {
  return unit_backward<AconC>(x, params, grad, inner, 0.0, upper, need_x, need_params, "acon_cpu");
}
