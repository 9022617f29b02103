// Device-independent driver of the SoloSim InfoNCE: checks, then the O(N d) parts around the
// streaming kernels (the positive logits, the mean, the diagonal term of the gradient).
#include <cmath>

#include "checks.h"
#include "solosim.h"

namespace mmfast {
namespace {

void check_inputs(const char* op, const at::Tensor& a, const at::Tensor& b, double scale) {
  check_like(op, "a", a, "a", a);
  check_like(op, "b", b, "a", a);
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": a and b must have the same shape [n, d] (row i of b ",
              "is row i of a's positive), got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(0) > 0, op, ": a and b need at least one row, got n = 0");
  TORCH_CHECK(std::isfinite(scale) && scale > 0, op,
              ": scale (1 / temperature) must be positive and finite, got ", scale);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> solosim_with(SolosimForwardKernel kernel, const at::Tensor& a,
                                                const at::Tensor& b, double scale) {
  check_inputs("solosim", a, b, scale);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor lse = at::empty({a.size(0)}, a.options());
  kernel(ac, bc, scale, lse);
  const at::Tensor positive = (ac * bc).sum(1) * scale;
  return {(lse - positive).mean(), lse};
}

// d/da_i = scale/n * (sum_j P_ij b_j - b_i), d/db_j = scale/n * (sum_i P_ij a_i - a_j).
std::tuple<at::Tensor, at::Tensor> solosim_backward_with(SolosimBackwardKernel kernel,
                                                         const at::Tensor& grad,
                                                         const at::Tensor& a, const at::Tensor& b,
                                                         const at::Tensor& lse, double scale) {
  check_inputs("solosim_backward", a, b, scale);
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == a.size(0) &&
                  lse.scalar_type() == a.scalar_type() && lse.device() == a.device(),
              "solosim_backward: lse must be the forward's [n] output, got shape ", lse.sizes());
  TORCH_CHECK(grad.numel() == 1, "solosim_backward: grad must be a scalar, got shape ",
              grad.sizes());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor pa = at::empty_like(ac), pb = at::empty_like(bc);
  kernel(ac, bc, scale, lse.contiguous(), pa, pb);
  const at::Tensor coef = grad.reshape({}).to(a.options()) * (scale / a.size(0));
  return {(pa - bc) * coef, (pb - ac) * coef};
}

}  // namespace mmfast
