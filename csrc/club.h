// CLUB q-net learning (club_learn): the device-independent driver and the kernel each device
// provides. The driver checks the q-net's tensors and flattens them; the kernel runs the
// Adam steps.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace mmfast {

// The CLUB q-net's shapes: mu head Linear(dx, h) -> ReLU -> Linear(h, dy); logvar head the
// same followed by tanh. Flat parameter layout, in this order:
//   W1m [h, dx], b1m [h], W2m [dy, h], b2m [dy], W1v [h, dx], b1v [h], W2v [dy, h], b2v [dy].
struct ClubShape {
  int64_t dx, h, dy;
  int64_t w1() const { return h * dx; }
  int64_t w2() const { return dy * h; }
  int64_t head() const { return w1() + h + w2() + dy; }  // one head's parameter count
  int64_t size() const { return 2 * head(); }
};

struct AdamConfig {
  int64_t step;  // steps already taken (torch.optim.Adam's state["step"])
  int64_t steps;
  double lr, beta1, beta2, eps;
};

// Runs cfg.steps Adam steps on the flat parameters (and flat moments), all contiguous and of
// x's dtype; writes the loss before each step to losses [steps] (x's dtype).
using ClubLearnKernel = void (*)(const ClubShape& shape, const at::Tensor& x, const at::Tensor& y,
                                 const at::Tensor& row_weight, at::Tensor& params,
                                 at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                 const AdamConfig& cfg, at::Tensor& losses);

at::Tensor club_learn_with(ClubLearnKernel kernel, const at::Tensor& x, const at::Tensor& y,
                           const at::Tensor& row_weight, at::TensorList params,
                           at::TensorList exp_avg, at::TensorList exp_avg_sq, int64_t step,
                           int64_t steps, double lr, double beta1, double beta2, double eps);

}  // namespace mmfast
