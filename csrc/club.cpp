// Device-independent driver of club_learn: checks the q-net's tensors against each other and
// against (x, y), flattens parameters and Adam moments for the kernel, and writes them back.
#include <cmath>
#include <vector>

#include "checks.h"
#include "club.h"

namespace mmfast {
namespace {

constexpr const char* kOp = "club_learn";
constexpr const char* kNames[8] = {"mu W1", "mu b1", "mu W2", "mu b2",
                                   "logvar W1", "logvar b1", "logvar W2", "logvar b2"};

std::vector<int64_t> expected_shape(const ClubShape& s, int i) {
  switch (i % 4) {
    case 0: return {s.h, s.dx};
    case 1: return {s.h};
    case 2: return {s.dy, s.h};
    default: return {s.dy};
  }
}

void check_list(const char* list, at::TensorList ts, const ClubShape& s, const at::Tensor& x) {
  TORCH_CHECK(ts.size() == 8, kOp, ": ", list, " must hold the q-net's 8 tensors, got ",
              ts.size());
  for (int i = 0; i < 8; ++i) {
    const at::Tensor& t = ts[i];
    TORCH_CHECK(t.sizes() == at::IntArrayRef(expected_shape(s, i)), kOp, ": ", list, "[", i,
                "] (", kNames[i], ") must have shape ", at::IntArrayRef(expected_shape(s, i)),
                ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), kOp, ": ", list,
                "[", i, "] (", kNames[i], ") is ", t.scalar_type(), " on ", t.device(),
                " but x is ", x.scalar_type(), " on ", x.device());
  }
}

at::Tensor flat(at::TensorList ts) {
  std::vector<at::Tensor> parts;
  for (const at::Tensor& t : ts) parts.push_back(t.reshape({-1}));
  return at::cat(parts);
}

void unflatten(const at::Tensor& f, at::TensorList ts) {
  int64_t offset = 0;
  for (const at::Tensor& t : ts) {
    t.copy_(f.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

}  // namespace

at::Tensor club_learn_with(ClubLearnKernel kernel, const at::Tensor& x, const at::Tensor& y,
                           const at::Tensor& row_weight, at::TensorList params,
                           at::TensorList exp_avg, at::TensorList exp_avg_sq, int64_t step,
                           int64_t steps, double lr, double beta1, double beta2, double eps) {
  check_like(kOp, "x", x, "x", x);
  check_like(kOp, "y", y, "x", x);
  TORCH_CHECK(x.size(0) == y.size(0), kOp, ": x and y must have the same number of rows, got ",
              x.size(0), " and ", y.size(0));
  TORCH_CHECK(x.size(0) > 0, kOp, ": x and y need at least one row, got n = 0");
  TORCH_CHECK(row_weight.dim() == 1 && row_weight.size(0) == x.size(0) &&
                  row_weight.scalar_type() == x.scalar_type() &&
                  row_weight.device() == x.device(),
              kOp, ": row_weight must be a [", x.size(0), "] tensor of x's dtype and device, got ",
              row_weight.sizes(), " ", row_weight.scalar_type(), " on ", row_weight.device());
  TORCH_CHECK(params.size() == 8 && params[0].dim() == 2 && params[2].dim() == 2, kOp,
              ": params must be the q-net's 8 tensors (mu W1 b1 W2 b2, logvar W1 b1 W2 b2)");
  const ClubShape shape{x.size(1), params[0].size(0), y.size(1)};
  TORCH_CHECK(shape.h > 0 && shape.dx > 0 && shape.dy > 0, kOp,
              ": x, y and the hidden layer need at least one feature");
  check_list("params", params, shape, x);
  check_list("exp_avg", exp_avg, shape, x);
  check_list("exp_avg_sq", exp_avg_sq, shape, x);
  TORCH_CHECK(step >= 0 && steps >= 0, kOp, ": step and steps must be non-negative, got ", step,
              " and ", steps);
  TORCH_CHECK(std::isfinite(lr) && lr >= 0, kOp, ": lr must be non-negative, got ", lr);
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, kOp,
              ": betas must lie in [0, 1), got (", beta1, ", ", beta2, ")");
  TORCH_CHECK(eps >= 0, kOp, ": eps must be non-negative, got ", eps);

  at::Tensor losses = at::empty({steps}, x.options());
  if (steps == 0) return losses;
  at::Tensor p = flat(params), m = flat(exp_avg), v = flat(exp_avg_sq);
  const AdamConfig cfg{step, steps, lr, beta1, beta2, eps};
  kernel(shape, x.contiguous(), y.contiguous(), row_weight.contiguous(), p, m, v, cfg, losses);
  unflatten(p, params);
  unflatten(m, exp_avg);
  unflatten(v, exp_avg_sq);
  return losses;
}

}  // namespace mmfast
