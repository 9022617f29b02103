// Device-independent driver of topk_scores: O(1) argument checks, allocation, empty shapes.
#include "topk.h"

#include "checks.h"

namespace mmfast {

std::tuple<at::Tensor, at::Tensor> topk_scores_with(
    TopkKernel kernel, const at::Tensor& queries, const at::Tensor& keys, int64_t k,
    const c10::optional<at::Tensor>& exclude_rowptr,
    const c10::optional<at::Tensor>& exclude_col) {
  constexpr const char* op = "topk_scores";
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  check_dense(op, "queries", queries, queries.device(), c10::nullopt);
  check_dense(op, "keys", keys, queries.device(), queries.scalar_type());
  TORCH_CHECK(queries.size(1) == keys.size(1), op, ": queries have width ", queries.size(1),
              " but keys have width ", keys.size(1));
  const int64_t n_queries = queries.size(0);

  TopkProblem p{queries.contiguous(), keys.contiguous(), k, false, {}, {}};
  TORCH_CHECK(exclude_rowptr.has_value() == exclude_col.has_value(), op,
              ": exclude_rowptr and exclude_col must be given together");
  if (exclude_rowptr.has_value()) {
    const at::Tensor& rowptr = *exclude_rowptr;
    const at::Tensor& col = *exclude_col;
    check_csr(op, "exclude", rowptr, col, col);
    TORCH_CHECK(rowptr.device() == queries.device(), op, ": exclude is on ", rowptr.device(),
                " but queries are on ", queries.device());
    TORCH_CHECK(rowptr.numel() == n_queries + 1, op,
                ": exclude must have one row per query (rowptr of ", n_queries + 1,
                " entries), got ", rowptr.numel());
    // No reads of the CSR's contents here: on CUDA each would be a device->host sync on every
    // call. The callers own its structure (rowptr from 0 to nnz, non-decreasing; col in
    // [0, n_keys)): mmfast.ops.topk_scores checks a raw CSR once and a SparseGraph is checked
    // when built. A corrupt CSR from a direct torch.ops caller still never makes a kernel read
    // out of bounds: the CPU kernel raises, the CUDA kernel clamps rows to [0, nnz] and skips
    // out-of-range ids.
    p.has_exclude = true;
    p.ex_rowptr = rowptr.contiguous();
    p.ex_col = col.contiguous();
  }

  at::Tensor values = at::empty({n_queries, k}, queries.options());
  at::Tensor indices = at::empty({n_queries, k}, queries.options().dtype(at::kLong));
  if (n_queries > 0) kernel(p, values, indices);
  return {values, indices};
}

}  // namespace mmfast
