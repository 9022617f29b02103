// SoloSim InfoNCE: the device-independent drivers and the kernels each device provides. The
// drivers check arguments, allocate and do the O(N d) arithmetic around the kernels; the
// kernels do the O(N^2 d) streaming log-sum-exp work.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace mmfast {

// lse[i] = logsumexp_j scale * <a_i, b_j>. a, b contiguous [n, d]; lse preallocated [n].
using SolosimForwardKernel = void (*)(const at::Tensor& a, const at::Tensor& b, double scale,
                                      at::Tensor& lse);
// With P = exp(scale * a b^T - lse[:, None]): pa = P b, pb = P^T a, both [n, d], preallocated.
using SolosimBackwardKernel = void (*)(const at::Tensor& a, const at::Tensor& b, double scale,
                                       const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb);

std::tuple<at::Tensor, at::Tensor> solosim_with(SolosimForwardKernel kernel, const at::Tensor& a,
                                                const at::Tensor& b, double scale);
std::tuple<at::Tensor, at::Tensor> solosim_backward_with(SolosimBackwardKernel kernel,
                                                         const at::Tensor& grad,
                                                         const at::Tensor& a, const at::Tensor& b,
                                                         const at::Tensor& lse, double scale);

}  // namespace mmfast
