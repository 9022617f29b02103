// Device-independent drivers of the graph ops: argument checks and the Horner recurrence.
#include "graph.h"

#include <utility>

#include "checks.h"

namespace mmfast {
namespace {

// Checks the graph (and its transpose, which only the backward pass reads) against x.
Csr checked_graph(const char* op, const at::Tensor& rowptr, const at::Tensor& col,
                  const at::Tensor& val, const at::Tensor& rowptr_t, const at::Tensor& col_t,
                  const at::Tensor& val_t, const at::Tensor& x) {
  check_csr(op, "graph", rowptr, col, val);
  check_csr(op, "transposed graph", rowptr_t, col_t, val_t);
  TORCH_CHECK(val.scalar_type() == at::kFloat || val.scalar_type() == at::kDouble, op,
              ": graph val must be float32 or float64, got ", val.scalar_type());
  TORCH_CHECK(col_t.numel() == col.numel(), op, ": the transposed graph has ", col_t.numel(),
              " entries but the graph has ", col.numel());
  check_dense(op, "x", x, val.device(), val.scalar_type());
  const int64_t n_cols = rowptr_t.numel() - 1;
  TORCH_CHECK(x.size(0) == n_cols, op, ": x has ", x.size(0), " rows but the graph has ", n_cols,
              " columns");
  return Csr{rowptr.contiguous(), col.contiguous(), val.contiguous(), rowptr.numel() - 1, n_cols};
}

}  // namespace

at::Tensor spmm_with(SpmmKernel kernel, const at::Tensor& rowptr, const at::Tensor& col,
                     const at::Tensor& val, const at::Tensor& rowptr_t, const at::Tensor& col_t,
                     const at::Tensor& val_t, const at::Tensor& x) {
  const Csr g = checked_graph("spmm", rowptr, col, val, rowptr_t, col_t, val_t, x);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty({g.n_rows, x.size(1)}, x.options());
  kernel(g, xc, at::Tensor(), 1.0, 0.0, out);
  return out;
}

// E = sum_k c_k G^k x for k = 0..L, as h <- c_k x + G h from k = L down to 0:
// two buffers whatever L is, and each step one fused kernel.
at::Tensor propagate_with(SpmmKernel kernel, const at::Tensor& rowptr, const at::Tensor& col,
                          const at::Tensor& val, const at::Tensor& rowptr_t,
                          const at::Tensor& col_t, const at::Tensor& val_t, const at::Tensor& x,
                          at::ArrayRef<double> coeffs) {
  const Csr g = checked_graph("propagate", rowptr, col, val, rowptr_t, col_t, val_t, x);
  TORCH_CHECK(g.n_rows == g.n_cols, "propagate: the graph must be square, got ", g.n_rows, " x ",
              g.n_cols);
  TORCH_CHECK(!coeffs.empty(), "propagate: coeffs must hold at least c_0");
  const at::Tensor x0 = x.contiguous();
  const int64_t layers = static_cast<int64_t>(coeffs.size()) - 1;
  if (layers == 0) return x0 * coeffs[0];
  at::Tensor h = at::empty_like(x0);
  at::Tensor next = at::empty_like(x0);
  kernel(g, x0, x0, coeffs[layers], coeffs[layers - 1], h);  // h = c_L G x0 + c_{L-1} x0
  for (int64_t k = layers - 2; k >= 0; --k) {
    kernel(g, h, x0, 1.0, coeffs[k], next);
    std::swap(h, next);
  }
  return h;
}

}  // namespace mmfast
