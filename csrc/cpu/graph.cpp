// CPU kernel of the graph ops: one row per inner iteration, rows split across threads by
// work (nonzeros + rows) so power-law degree distributions stay balanced. Each output row
// is written by one thread in a fixed order, so results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../bind.h"
#include "../graph.h"

namespace mmfast {
namespace {

// splits[p]..splits[p+1] is part p's row range, each with about the same rows + nonzeros.
std::vector<int64_t> balanced_row_splits(const int64_t* rowptr, int64_t n_rows, int64_t parts) {
  std::vector<int64_t> splits(parts + 1, n_rows);
  splits[0] = 0;
  const int64_t total = rowptr[n_rows] + n_rows;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total / parts * p;
    int64_t lo = splits[p - 1], hi = n_rows;  // first r with rowptr[r] + r >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    splits[p] = lo;
  }
  return splits;
}

template <typename scalar_t, typename index_t>
void spmm_rows(const Csr& g, const scalar_t* __restrict__ x, const scalar_t* addend,
               scalar_t alpha, scalar_t beta, scalar_t* __restrict__ out, int64_t d) {
  const int64_t* rowptr = g.rowptr.data_ptr<int64_t>();
  const index_t* col = g.col.data_ptr<index_t>();
  const scalar_t* val = g.val.data_ptr<scalar_t>();
  const int64_t n_rows = g.n_rows, n_cols = g.n_cols, nnz = g.col.numel();
  TORCH_CHECK(rowptr[0] == 0 && rowptr[n_rows] == nnz,
              "spmm: graph rowptr must start at 0 and end at nnz = ", nnz, ", got ", rowptr[0],
              " ... ", rowptr[n_rows]);

  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(n_rows, 8 * at::get_num_threads()));
  const std::vector<int64_t> splits = balanced_row_splits(rowptr, n_rows, parts);
  std::atomic<bool> bad_col{false}, bad_rowptr{false};

  at::parallel_for(0, parts, 1, [&](int64_t p_begin, int64_t p_end) {
    for (int64_t r = splits[p_begin]; r < splits[p_end]; ++r) {
      scalar_t* __restrict__ o = out + r * d;
      std::fill(o, o + d, scalar_t(0));
      const int64_t begin = rowptr[r], end = rowptr[r + 1];
      if (begin < 0 || begin > end || end > nnz) { bad_rowptr = true; continue; }
      for (int64_t j = begin; j < end; ++j) {
        const int64_t c = static_cast<int64_t>(col[j]);
        if (c < 0 || c >= n_cols) { bad_col = true; continue; }
        const scalar_t v = val[j];
        const scalar_t* __restrict__ xr = x + c * d;
        for (int64_t t = 0; t < d; ++t) o[t] += v * xr[t];
      }
      if (addend != nullptr) {
        const scalar_t* __restrict__ a = addend + r * d;
        for (int64_t t = 0; t < d; ++t) o[t] = alpha * o[t] + beta * a[t];
      } else if (alpha != scalar_t(1)) {
        for (int64_t t = 0; t < d; ++t) o[t] *= alpha;
      }
    }
  });
  TORCH_CHECK(!bad_rowptr, "spmm: graph rowptr must be non-decreasing (sorted CSR) and end at nnz");
  TORCH_CHECK(!bad_col, "spmm: graph col holds an index outside [0, ", n_cols, ")");
}

void spmm_kernel_cpu(const Csr& g, const at::Tensor& x, const at::Tensor& addend, double alpha,
                     double beta, at::Tensor& out) {
  const bool add = addend.defined() && beta != 0.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmfast_spmm_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(g.col.scalar_type(), "mmfast_spmm_cpu", [&] {
      spmm_rows<scalar_t, index_t>(g, x.data_ptr<scalar_t>(),
                                   add ? addend.data_ptr<scalar_t>() : nullptr,
                                   static_cast<scalar_t>(alpha), static_cast<scalar_t>(beta),
                                   out.data_ptr<scalar_t>(), x.size(1));
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("spmm", &Bind<spmm_with, spmm_kernel_cpu>::op);
  m.impl("propagate", &Bind<propagate_with, spmm_kernel_cpu>::op);
}

}  // namespace mmfast
