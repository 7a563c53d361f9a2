// The Python module of petl's fused CPU kernels: the activation units (spline_cpu.cpp, units_cpu.cpp) and
// Conv-Adapter's grouped conv (grouped_conv_cpu.cpp).
#include <torch/extension.h>

#include <vector>

torch::Tensor spline_forward(torch::Tensor x, torch::Tensor coef, int64_t inner, double range, double step,
                             double upper);
std::vector<torch::Tensor> spline_backward(torch::Tensor x, torch::Tensor coef, torch::Tensor grad, int64_t inner,
                                           double range, double step, double upper, bool need_x, bool need_c);
torch::Tensor rational_forward(torch::Tensor x, torch::Tensor params, int64_t inner, double fit_range,
                               double upper);
std::vector<torch::Tensor> rational_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad,
                                             int64_t inner, double fit_range, double upper, bool need_x,
                                             bool need_params);
torch::Tensor acon_forward(torch::Tensor x, torch::Tensor params, int64_t inner, double upper);
std::vector<torch::Tensor> acon_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad, int64_t inner,
                                         double upper, bool need_x, bool need_params);
torch::Tensor grouped_conv_forward(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                                   int64_t stride, int64_t pad);
std::vector<torch::Tensor> grouped_conv_backward(torch::Tensor x, torch::Tensor weight, torch::Tensor grad,
                                                 int64_t stride, int64_t pad, bool need_x, bool need_weight);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spline_forward", &spline_forward, "fused linear spline forward (CPU)");
  m.def("spline_backward", &spline_backward, "fused linear spline backward (CPU)");
  m.def("rational_forward", &rational_forward, "fused safe Pade unit forward (CPU)");
  m.def("rational_backward", &rational_backward, "fused safe Pade unit backward (CPU)");
  m.def("acon_forward", &acon_forward, "fused ACON-C forward (CPU)");
  m.def("acon_backward", &acon_backward, "fused ACON-C backward (CPU)");
  m.def("grouped_conv_forward", &grouped_conv_forward, "Conv-Adapter's grouped conv, channels_last (CPU)");
  m.def("grouped_conv_backward", &grouped_conv_backward, "its input and weight gradients (CPU)");
}
