// Sparse graph propagation: the device-independent drivers and the kernel they call.
#pragma once

#include <ATen/ATen.h>

namespace mmfast {

// A CSR matrix of shape [n_rows, n_cols], already checked.
struct Csr {
  at::Tensor rowptr, col, val;
  int64_t n_rows, n_cols;
};

// The one kernel each device provides:
//   out = alpha * (g @ x) + beta * addend     (addend is read only when defined and beta != 0)
// out is preallocated, contiguous, shaped like g.n_rows x x.size(1); x and addend contiguous.
using SpmmKernel = void (*)(const Csr& g, const at::Tensor& x, const at::Tensor& addend,
                            double alpha, double beta, at::Tensor& out);

at::Tensor spmm_with(SpmmKernel kernel, const at::Tensor& rowptr, const at::Tensor& col,
                     const at::Tensor& val, const at::Tensor& rowptr_t, const at::Tensor& col_t,
                     const at::Tensor& val_t, const at::Tensor& x);

at::Tensor propagate_with(SpmmKernel kernel, const at::Tensor& rowptr, const at::Tensor& col,
                          const at::Tensor& val, const at::Tensor& rowptr_t,
                          const at::Tensor& col_t, const at::Tensor& val_t, const at::Tensor& x,
                          at::ArrayRef<double> coeffs);

}  // namespace mmfast
