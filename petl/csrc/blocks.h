// Shared by petl's fused CPU kernels of the learnable activation units: how a dense activation tensor is walked.
//
// The input is read in memory order as (outer, C, inner) blocks, inner = x.stride(1): contiguous NCHW has runs of
// one channel (inner = H * W), channels_last / (N, C) has one channel per element of a row of C (inner = 1), and
// a unit shared by every channel (C = 1) reads the whole buffer as one channel. Each block's loop is then a plain
// loop the compiler vectorises.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>

namespace petl {

// Calls body(offset, len, per_element, channel) over the (outer, C, inner) decomposition, in parallel.
// per_element: element t of the block is in channel t (a channels_last row); else all of it is in `channel`.
template <typename Body>
void for_blocks(int64_t n, int64_t channels, int64_t inner, const Body& body) {
  if (channels == 1) {
    at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) { body(b, e - b, false, 0); });
  } else if (inner == 1) {                            // rows of C elements, element t in channel t
    at::parallel_for(0, n / channels, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) body(r * channels, channels, true, 0);
    });
  } else {                                            // runs of `inner` elements of one channel
    at::parallel_for(0, n / inner, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) body(r * inner, inner, false, r % channels);
    });
  }
}

inline void check_layout(const torch::Tensor& x, int64_t channels, int64_t inner, const char* kernel) {
  TORCH_CHECK(x.device().is_cpu(), kernel, ": CPU tensors only");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), kernel, ": x must be dense");
  TORCH_CHECK(inner >= 1 && (channels == 1 || x.numel() % (channels * inner) == 0), kernel, ": bad layout");
}

inline void check_grad(const torch::Tensor& x, const torch::Tensor& grad, const char* kernel) {
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.strides() == x.strides() && grad.scalar_type() == x.scalar_type(),
              kernel, ": grad must have x's shape, strides and dtype");
}

}  // namespace petl
