// Every mmfast op's schema, in one place. Kernels register in cpu/ and cuda/;
// autograd and fake (meta) kernels register from Python (mmfast/ops/).
#include <torch/library.h>

TORCH_LIBRARY(mmfast, m) {
  // y = G x. The transpose (rowptr_t, col_t, val_t) is what the backward multiplies by.
  m.def(
      "spmm(Tensor rowptr, Tensor col, Tensor val, Tensor rowptr_t, Tensor col_t, Tensor val_t, "
      "Tensor x) -> Tensor");
  // E = sum_k coeffs[k] G^k x, k = 0..len(coeffs)-1, fused; backward is the same op on G^T.
  m.def(
      "propagate(Tensor rowptr, Tensor col, Tensor val, Tensor rowptr_t, Tensor col_t, "
      "Tensor val_t, Tensor x, float[] coeffs) -> Tensor");
}
