// Batched top-K of inner products: the device-independent driver and the kernel it calls.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace mmfast {

// One checked topk_scores call. Rows of `queries` score against rows of `keys`; query row q
// skips the key ids ex_col[ex_rowptr[q] .. ex_rowptr[q+1]) when has_exclude. The driver checks
// the exclude CSR's dtypes and sizes only, not its contents (no host syncs): a kernel must not
// read out of bounds when rowptr or col is corrupt (see topk.cpp).
struct TopkProblem {
  at::Tensor queries, keys;    // [n_queries, d], [n_keys, d], contiguous, same dtype
  int64_t k;                   // >= 1
  bool has_exclude;
  at::Tensor ex_rowptr, ex_col;  // int64 [n_queries + 1], int32/int64 [nnz]; contiguous
};

// The one kernel each device provides. values [n_queries, k] (queries' dtype) and indices
// [n_queries, k] (int64) are preallocated; every slot must be written: the k best
// (score desc, index asc) non-excluded keys with a non-NaN score, then -inf / -1 padding.
using TopkKernel = void (*)(const TopkProblem& p, at::Tensor& values, at::Tensor& indices);

std::tuple<at::Tensor, at::Tensor> topk_scores_with(
    TopkKernel kernel, const at::Tensor& queries, const at::Tensor& keys, int64_t k,
    const c10::optional<at::Tensor>& exclude_rowptr, const c10::optional<at::Tensor>& exclude_col);

}  // namespace mmfast
