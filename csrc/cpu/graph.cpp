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
#include "simd.h"

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

// o[0:W] = alpha sum_j val[j] x[col[j], 0:W] (+ beta a[0:W] when a is given), W = NV vectors:
// the sums stay in NV registers for the whole row, each entry one broadcast and NV fused
// multiply-adds on a contiguous slice of x's row, and the row is stored once.
constexpr int64_t kAhead = 12;  // entries between a row's prefetch and its use

template <typename T, typename index_t, int NV>
MMFAST_INLINE void row_slice(int64_t begin, int64_t end, int64_t stop, const index_t* __restrict__ col,
                             const T* __restrict__ val, const T* __restrict__ x, int64_t d,
                             const T* __restrict__ a, T alpha, T beta, T* __restrict__ o) {
  constexpr int L = simd::kLanes<T>;
  simd::Vec<T> acc[NV] = {};
  for (int64_t j = begin; j < end; ++j) {
    if (j + kAhead < stop) {  // the row kAhead entries on, likely from L3 or memory
      const char* ahead = reinterpret_cast<const char*>(x + static_cast<int64_t>(col[j + kAhead]) * d);
      for (int k = 0; k < NV * L * int(sizeof(T)); k += 64) __builtin_prefetch(ahead + k);
    }
    const T* __restrict__ xr = x + static_cast<int64_t>(col[j]) * d;
    const T v = val[j];
    for (int k = 0; k < NV; ++k) acc[k] += v * simd::load(xr + k * L);
  }
  if (a != nullptr) {
    for (int k = 0; k < NV; ++k) simd::store(o + k * L, alpha * acc[k] + beta * simd::load(a + k * L));
  } else {
    for (int k = 0; k < NV; ++k) simd::store(o + k * L, alpha * acc[k]);
  }
}

// Rows [r_begin, r_end) of out = alpha (G x) + beta addend. Column indices are checked before.
template <typename T, typename index_t>
MMFAST_SIMD_CLONES void spmm_part(int64_t r_begin, int64_t r_end, const int64_t* rowptr,
                                  const index_t* col, const T* val, const T* x, const T* addend,
                                  T alpha, T beta, T* out, int64_t d) {
  constexpr int64_t L = simd::kLanes<T>, W = 8 * L;  // 8 vectors: 64 floats, 32 doubles
  for (int64_t r = r_begin; r < r_end; ++r) {
    T* __restrict__ o = out + r * d;
    const T* a = addend != nullptr ? addend + r * d : nullptr;
    const int64_t begin = rowptr[r], end = rowptr[r + 1], stop = rowptr[r_end];
    int64_t c = 0;
    for (; c + W <= d; c += W)
      row_slice<T, index_t, 8>(begin, end, stop, col, val, x + c, d, a ? a + c : a, alpha, beta, o + c);
    if (c + 4 * L <= d) {
      row_slice<T, index_t, 4>(begin, end, stop, col, val, x + c, d, a ? a + c : a, alpha, beta, o + c);
      c += 4 * L;
    }
    if (c + 2 * L <= d) {
      row_slice<T, index_t, 2>(begin, end, stop, col, val, x + c, d, a ? a + c : a, alpha, beta, o + c);
      c += 2 * L;
    }
    if (c + L <= d) {
      row_slice<T, index_t, 1>(begin, end, stop, col, val, x + c, d, a ? a + c : a, alpha, beta, o + c);
      c += L;
    }
    if (c < d) {  // fewer columns than one vector are left: one more pass, scalar sums
      const int64_t rest = d - c;
      T sum[L] = {};
      for (int64_t j = begin; j < end; ++j) {
        const T* xr = x + static_cast<int64_t>(col[j]) * d + c;
        const T v = val[j];
        for (int64_t t = 0; t < rest; ++t) sum[t] += v * xr[t];
      }
      for (int64_t t = 0; t < rest; ++t)
        o[c + t] = a != nullptr ? alpha * sum[t] + beta * a[c + t] : alpha * sum[t];
    }
  }
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
    const int64_t r_begin = splits[p_begin], r_end = splits[p_end];
    // The part's structure is checked first (a cheap pass over its indices), so the product
    // itself reads x without a branch per entry.
    for (int64_t r = r_begin; r < r_end; ++r) {
      if (rowptr[r] < 0 || rowptr[r] > rowptr[r + 1] || rowptr[r + 1] > nnz) {
        bad_rowptr = true;
        return;
      }
    }
    bool ok = true;
    for (int64_t j = rowptr[r_begin]; j < rowptr[r_end]; ++j) {
      const int64_t c = static_cast<int64_t>(col[j]);
      ok &= (c >= 0) & (c < n_cols);
    }
    if (!ok) {
      bad_col = true;
      return;
    }
    spmm_part<scalar_t, index_t>(r_begin, r_end, rowptr, col, val, x, addend, alpha, beta, out, d);
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
