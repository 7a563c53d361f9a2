// Fused CPU kernels of Conv-Adapter's grouped k x k conv on channels_last tensors: each of the G output channels
// sums the k x k windows of its group's A = C / G input channels (conv1 of petl.methods.conv_adapter.ConvAdapter,
// groups = G = out_channels, square kernel, stride and padding, dilation 1).
//
// Why: oneDNN runs this shape (groups of A inputs -> 1 output) as a slow grouped conv, and its exact rewrite as a
// depth-wise conv plus a sum over each group (petl.methods.conv_adapter.depthwise_form) writes and reads back a
// C-wide intermediate at full resolution in the forward, and a C-wide expanded gradient in the backward: on CPU
// that memory traffic, not arithmetic, is the adapter's cost. Here one pass per direction keeps the C-wide sums
// in a row buffer in cache (each group's sum of A is a vector reduction, `omp simd`):
//   forward      out[n, oh, ow, g] = bias[g] + sum_{kh, kw, a} x[n, ih, iw, g A + a] w[g, a, kh, kw]
//   input grad   dx[n, ih, iw, c]  = sum over the taps that read (ih, iw) of dout[n, oh, ow, c / A] w[c, kh, kw]
//   weight grad  dw[c, kh, kw]     = sum_{n, oh, ow} dout[n, oh, ow, c / A] x[n, ih, iw, c]
// with ih = oh stride - pad + kh, iw = ow stride - pad + kw. The weights are read as a (k k, C) table (row t = the
// tap kh k + kw, element c = g A + a), so every inner loop runs over a contiguous row of C channels. Weight
// gradients are summed per output row in T, then in double per fixed chunk of rows, then over the chunks in
// order (deterministic for a fixed thread count). The bias gradient is a plain sum of dout (done by the caller).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

struct Geometry {
  int64_t batch, height, width, channels, groups, per_group, kernel, stride, pad, out_height, out_width;

  int64_t taps() const { return kernel * kernel; }
};

Geometry geometry(const torch::Tensor& x, const torch::Tensor& weight, int64_t stride, int64_t pad) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "grouped_conv_cpu: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "grouped_conv_cpu: x (N, C, H, W) and weight (G, A, k, k)");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "grouped_conv_cpu: x must be channels_last");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "grouped_conv_cpu: x and weight dtypes differ");
  TORCH_CHECK(stride >= 1 && pad >= 0, "grouped_conv_cpu: stride >= 1, padding >= 0");
  Geometry s{};
  s.batch = x.size(0);
  s.channels = x.size(1);
  s.height = x.size(2);
  s.width = x.size(3);
  s.groups = weight.size(0);
  s.per_group = weight.size(1);
  s.kernel = weight.size(2);
  TORCH_CHECK(weight.size(3) == s.kernel, "grouped_conv_cpu: square kernels only");
  TORCH_CHECK(s.groups * s.per_group == s.channels, "grouped_conv_cpu: weight (G, A, k, k) needs G A = C");
  s.stride = stride;
  s.pad = pad;
  s.out_height = (s.height + 2 * pad - s.kernel) / stride + 1;
  s.out_width = (s.width + 2 * pad - s.kernel) / stride + 1;
  TORCH_CHECK(s.out_height > 0 && s.out_width > 0, "grouped_conv_cpu: empty output");
  return s;
}

// Calls body(t, offset) for each tap t = kh k + kw of output pixel (n, oh, ow) that falls inside the input, with
// offset the start of the input pixel (n, ih, iw) it reads in the channels_last buffer.
template <typename Body>
inline void for_each_tap(const Geometry& s, int64_t n, int64_t oh, int64_t ow, const Body& body) {
  for (int64_t kh = 0; kh < s.kernel; ++kh) {
    const int64_t ih = oh * s.stride - s.pad + kh;
    if (ih < 0 || ih >= s.height) continue;
    for (int64_t kw = 0; kw < s.kernel; ++kw) {
      const int64_t iw = ow * s.stride - s.pad + kw;
      if (iw < 0 || iw >= s.width) continue;
      body(kh * s.kernel + kw, ((n * s.height + ih) * s.width + iw) * s.channels);
    }
  }
}

// (G, A, k, k) -> (k k, C): row t holds tap t of every input channel.
torch::Tensor tap_table(const torch::Tensor& weight, const Geometry& s) {
  return weight.reshape({s.channels, s.taps()}).t().contiguous();
}

template <typename T>
void forward_rows(const T* __restrict x, const T* __restrict table, const T* __restrict bias, T* __restrict out,
                  const Geometry& s) {
  at::parallel_for(0, s.batch * s.out_height, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sums(s.channels);
    T* __restrict acc = sums.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / s.out_height, oh = row % s.out_height;
      for (int64_t ow = 0; ow < s.out_width; ++ow) {
        std::fill(sums.begin(), sums.end(), T(0));
        for_each_tap(s, n, oh, ow, [&](int64_t t, int64_t offset) {
          T* __restrict a = acc;
          const T* __restrict xr = x + offset;
          const T* __restrict wr = table + t * s.channels;
          for (int64_t c = 0; c < s.channels; ++c) a[c] += xr[c] * wr[c];
        });
        T* __restrict o = out + ((n * s.out_height + oh) * s.out_width + ow) * s.groups;
        for (int64_t g = 0; g < s.groups; ++g) {
          const T* __restrict part = acc + g * s.per_group;
          T sum = T(0);
#pragma omp simd reduction(+ : sum)
          for (int64_t a = 0; a < s.per_group; ++a) sum += part[a];
          o[g] = bias ? sum + bias[g] : sum;
        }
      }
    }
  });
}

// dx row by row (gather form: each input pixel sums the taps that read it; no write conflicts between threads).
template <typename T>
void input_grad_rows(const T* __restrict dout, const T* __restrict table, T* __restrict dx, const Geometry& s) {
  at::parallel_for(0, s.batch * s.height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / s.height, ih = row % s.height;
      for (int64_t iw = 0; iw < s.width; ++iw) {
        T* __restrict d = dx + ((n * s.height + ih) * s.width + iw) * s.channels;
        std::fill(d, d + s.channels, T(0));
        for (int64_t kh = 0; kh < s.kernel; ++kh) {
          const int64_t top = ih + s.pad - kh;
          if (top < 0 || top % s.stride) continue;
          const int64_t oh = top / s.stride;
          if (oh >= s.out_height) continue;
          for (int64_t kw = 0; kw < s.kernel; ++kw) {
            const int64_t left = iw + s.pad - kw;
            if (left < 0 || left % s.stride) continue;
            const int64_t ow = left / s.stride;
            if (ow >= s.out_width) continue;
            const T* __restrict g_out = dout + ((n * s.out_height + oh) * s.out_width + ow) * s.groups;
            const T* __restrict wr = table + (kh * s.kernel + kw) * s.channels;
            for (int64_t g = 0; g < s.groups; ++g) {
              const T dg = g_out[g];
              const int64_t c0 = g * s.per_group;
              for (int64_t a = 0; a < s.per_group; ++a) d[c0 + a] += dg * wr[c0 + a];
            }
          }
        }
      }
    }
  });
}

// dw as a (k k, C) table: per output row in T, per chunk of rows in double, chunks summed in order.
template <typename T>
void weight_grad_rows(const T* __restrict x, const T* __restrict dout, double* __restrict dw, const Geometry& s) {
  const int64_t rows = s.batch * s.out_height;
  const int64_t table = s.taps() * s.channels;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<double> partial(static_cast<size_t>(chunks * table), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    std::vector<T> row_sums(table);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      double* __restrict mine = partial.data() + chunk * table;
      for (int64_t row = chunk * rows / chunks; row < (chunk + 1) * rows / chunks; ++row) {
        const int64_t n = row / s.out_height, oh = row % s.out_height;
        std::fill(row_sums.begin(), row_sums.end(), T(0));
        T* __restrict acc = row_sums.data();
        for (int64_t ow = 0; ow < s.out_width; ++ow) {
          const T* __restrict g_out = dout + ((n * s.out_height + oh) * s.out_width + ow) * s.groups;
          for_each_tap(s, n, oh, ow, [&](int64_t t, int64_t offset) {
            const T* __restrict xr = x + offset;
            T* __restrict tap = acc + t * s.channels;
            for (int64_t g = 0; g < s.groups; ++g) {
              const T dg = g_out[g];
              const int64_t c0 = g * s.per_group;
              for (int64_t a = 0; a < s.per_group; ++a) tap[c0 + a] += dg * xr[c0 + a];
            }
          });
        }
        for (int64_t j = 0; j < table; ++j) mine[j] += static_cast<double>(acc[j]);
      }
    }
  });
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t j = 0; j < table; ++j) dw[j] += partial[static_cast<size_t>(chunk * table + j)];
}

}  // namespace

torch::Tensor grouped_conv_forward(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                                   int64_t stride, int64_t pad) {
  const Geometry s = geometry(x, weight, stride, pad);
  const torch::Tensor table = tap_table(weight, s);
  torch::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.numel() == s.groups && b.scalar_type() == x.scalar_type(), "grouped_conv_cpu: bad bias");
  }
  auto out = torch::empty({s.batch, s.groups, s.out_height, s.out_width},
                          x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_conv_cpu", [&] {
    forward_rows<scalar_t>(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                           b.defined() ? b.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), s);
  });
  return out;
}

// Returns {dx, dw}; an undefined tensor for a gradient not asked for. grad must be channels_last.
std::vector<torch::Tensor> grouped_conv_backward(torch::Tensor x, torch::Tensor weight, torch::Tensor grad,
                                                 int64_t stride, int64_t pad, bool need_x, bool need_weight) {
  const Geometry s = geometry(x, weight, stride, pad);
  TORCH_CHECK(grad.is_contiguous(at::MemoryFormat::ChannelsLast) && grad.scalar_type() == x.scalar_type() &&
                  grad.size(0) == s.batch && grad.size(1) == s.groups && grad.size(2) == s.out_height &&
                  grad.size(3) == s.out_width,
              "grouped_conv_cpu: grad must be the output's shape, channels_last, x's dtype");
  torch::Tensor dx, dw;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_conv_cpu", [&] {
    if (need_x) {
      const torch::Tensor table = tap_table(weight, s);
      dx = torch::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
      input_grad_rows<scalar_t>(grad.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                                s);
    }
    if (need_weight) {
      auto sums = torch::zeros({s.taps(), s.channels}, x.options().dtype(torch::kFloat64));
      weight_grad_rows<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), sums.data_ptr<double>(), s);
      dw = sums.t().reshape(weight.sizes()).to(weight.scalar_type());
    }
  });
  return {dx, dw};
}
