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
  // SoloSim InfoNCE, streaming: returns (loss, lse) with loss = mean_i (lse_i - scale <a_i, b_i>)
  // and lse_i = logsumexp_j scale <a_i, b_j>; nothing N x N is stored.
  m.def("solosim(Tensor a, Tensor b, float scale) -> (Tensor, Tensor)");
  // Its gradient from the saved lse alone, recomputing the logit tiles.
  m.def(
      "solosim_backward(Tensor grad, Tensor a, Tensor b, Tensor lse, float scale) "
      "-> (Tensor, Tensor)");
  // `steps` Adam steps of the CLUB q-net on the Gaussian NLL of (x, y), rows weighted by
  // row_weight; params/exp_avg/exp_avg_sq are the net's 8 tensors (mu: W1 b1 W2 b2, then logvar
  // head), updated in place. Returns the loss before each step.
  m.def(
      "club_learn(Tensor x, Tensor y, Tensor row_weight, Tensor(a!)[] params, "
      "Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, int step, int steps, float lr, "
      "float beta1, float beta2, float eps) -> Tensor");
  // Per query row the k largest <query, key> over key rows, skipping the key ids that the CSR
  // (exclude_rowptr, exclude_col) lists for that row; ties go to the smaller key index; rows
  // with fewer than k candidates are padded with value -inf and index -1. Not differentiable.
  m.def(
      "topk_scores(Tensor queries, Tensor keys, int k, Tensor? exclude_rowptr=None, "
      "Tensor? exclude_col=None) -> (Tensor values, Tensor indices)");
}
