// C++ check of the library build: the ops are registered by linking libmmfast, and
// propagate matches a dense float64 computation of the same layer combination.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

namespace {

at::Tensor call_propagate(const at::Tensor& dense, const at::Tensor& x, std::vector<double> c) {
  const at::Tensor csr = dense.to_sparse_csr();
  const at::Tensor csr_t = dense.t().contiguous().to_sparse_csr();
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mmfast::propagate", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, at::ArrayRef<double>)>();
  return op.call(csr.crow_indices(), csr.col_indices(), csr.values(), csr_t.crow_indices(),
                 csr_t.col_indices(), csr_t.values(), x, c);
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t n = 97, d = 13;
  at::Tensor dense = at::rand({n, n}, at::kDouble);
  dense = dense * (at::rand({n, n}, at::kDouble) < 0.05);
  const at::Tensor x = at::randn({n, d}, at::kDouble);
  const std::vector<double> coeffs{0.25, 0.25, 0.25, 0.25};

  at::Tensor expected = coeffs[0] * x, h = x;
  for (size_t k = 1; k < coeffs.size(); ++k) {
    h = dense.matmul(h);
    expected = expected + coeffs[k] * h;
  }
  const at::Tensor got = call_propagate(dense, x, coeffs);
  const double err = (got - expected).abs().max().item<double>();
  std::printf("mmfast::propagate vs dense: max abs error %.3g\n", err);
  return err < 1e-10 ? 0 : 1;
}
