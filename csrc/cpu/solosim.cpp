// CPU kernels of SoloSim. b is packed once feature-major (b^T, zero-padded), so that a block
// of kRows rows of a against a chunk of kCols rows of b is a register-tiled GEMM with b's rows
// as the SIMD dimension, into a logit tile that stays in L1. The forward reduces each tile by
// an online log-sum-exp (a running max and rescaled sum per row, rescaled once per tile);
// the backward recomputes the tile, turns it into probabilities with a vectorised exp and
// uses it for both gradients. Work is split into a fixed number of parts (not threads), each
// summed in a fixed order, so results are reproducible run to run.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../bind.h"
#include "../solosim.h"
#include "simd.h"

namespace mmfast {
namespace {

using simd::Vec;
using simd::kLanes;

constexpr int64_t kRows = 16;   // rows of a per block (a multiple of simd::kTile)
constexpr int64_t kCols = 256;  // rows of b per tile: a 16 x 256 double tile is 32 KiB

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// a and b in the layouts the tiles read, features padded to simd::kTile with zeros:
// a_scaled, a: [rows_pad, dp] row-major (a_scaled = a * scale, for the logits);
// bt: [dp, cols_pad] (b transposed); col_bias [cols_pad]: 0, or -inf for padding columns so
// that they drop out of every softmax.
template <typename T>
struct Packed {
  int64_t n, d, dp, rows_pad, cols_pad;
  std::vector<T> a_scaled, a, bt, col_bias;

  Packed(const at::Tensor& at_a, const at::Tensor& at_b, double scale)
      : n(at_a.size(0)), d(at_a.size(1)), dp(round_up(d, simd::kTile)),
        rows_pad(round_up(n, kRows)), cols_pad(round_up(n, kCols)),
        a_scaled(rows_pad * dp, T(0)), a(rows_pad * dp, T(0)), bt(dp * cols_pad, T(0)),
        col_bias(cols_pad, -std::numeric_limits<T>::infinity()) {
    const T* pa = at_a.data_ptr<T>();
    const T* pb = at_b.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t f = 0; f < d; ++f) {
        a[i * dp + f] = pa[i * d + f];
        a_scaled[i * dp + f] = static_cast<T>(pa[i * d + f] * scale);
        bt[f * cols_pad + i] = pb[i * d + f];
      }
      col_bias[i] = 0;
    }
  }
  int64_t blocks() const { return rows_pad / kRows; }
};

// tile [kRows, kCols] = logits of block rows [r0, r0 + kRows) against columns [c0, c0 + kCols).
template <typename T>
MMFAST_INLINE void logits(const Packed<T>& pk, int64_t r0, int64_t c0, T* tile) {
  for (int64_t i = 0; i < kRows; ++i)
    std::copy_n(pk.col_bias.data() + c0, kCols, tile + i * kCols);
  simd::gemm_bcast<T>(kRows, pk.dp, kCols, pk.a_scaled.data() + r0 * pk.dp, pk.dp, 1,
                      pk.bt.data() + c0, pk.cols_pad, tile, kCols);
}

// lse of one block's rows.
template <typename T>
MMFAST_SIMD_CLONES void forward_block(const Packed<T>& pk, int64_t r0, T* tile, T* lse) {
  using acc_t = at::acc_type<T, false>;
  constexpr int64_t L = kLanes<T>;
  T run_max[kRows];
  acc_t run_sum[kRows];
  std::fill_n(run_max, kRows, -std::numeric_limits<T>::infinity());
  std::fill_n(run_sum, kRows, acc_t(0));
  for (int64_t c0 = 0; c0 < pk.cols_pad; c0 += kCols) {
    logits(pk, r0, c0, tile);
    for (int64_t i = 0; i < kRows; ++i) {
      const T* row = tile + i * kCols;
      Vec<T> vmax = simd::load(row);
      for (int64_t c = L; c < kCols; c += L) {
        const Vec<T> v = simd::load(row + c);
        vmax = v > vmax ? v : vmax;
      }
      T m = run_max[i];
      for (int64_t l = 0; l < L; ++l) m = std::max<T>(m, vmax[l]);
      // Every tile holds a real column, so m is finite from the first tile on.
      const Vec<T> shift = simd::splat<T>(m);
      Vec<T> sum = {};
      for (int64_t c = 0; c < kCols; c += L) sum += simd::exp<T>(simd::load(row + c) - shift);
      run_sum[i] = run_sum[i] * std::exp(static_cast<acc_t>(run_max[i]) - m) + simd::hsum<T>(sum);
      run_max[i] = m;
    }
  }
  for (int64_t i = 0; i < kRows; ++i)
    lse[i] = static_cast<T>(run_max[i] + std::log(run_sum[i]));
}

void solosim_forward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                         at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_cpu", [&] {
    const Packed<scalar_t> pk(a, b, scale);
    std::vector<scalar_t> out(pk.rows_pad);
    at::parallel_for(0, pk.blocks(), 1, [&](int64_t blk_begin, int64_t blk_end) {
      std::vector<scalar_t> tile(kRows * kCols);
      for (int64_t blk = blk_begin; blk < blk_end; ++blk)
        forward_block(pk, blk * kRows, tile.data(), out.data() + blk * kRows);
    });
    std::copy_n(out.data(), pk.n, lse.data_ptr<scalar_t>());
  });
}

// One block's rows: pa rows [kRows, dp] (acc_t, added to), and the block's share of
// pb^T [dp, cols_pad] added to pbt. lse: the block's rows' lse, +inf on padding rows (P = 0).
template <typename T, typename acc_t>
MMFAST_SIMD_CLONES void backward_block(const Packed<T>& pk, int64_t r0, const T* lse, T* tile,
                                       acc_t* pa, T* pbt) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t c0 = 0; c0 < pk.cols_pad; c0 += kCols) {
    logits(pk, r0, c0, tile);
    for (int64_t i = 0; i < kRows; ++i) {  // P = exp(logit - lse), 0 on padding
      const Vec<T> shift = simd::splat<T>(lse[i]);
      for (int64_t c = 0; c < kCols; c += L)
        simd::store(tile + i * kCols + c, simd::exp<T>(simd::load(tile + i * kCols + c) - shift));
    }
    // pa[i, f] += sum_c P[i, c] b[c, f];  pb^T[f, c] += sum_i a[i, f] P[i, c].
    simd::gemm_dot<T, acc_t>(kRows, pk.dp, kCols, tile, kCols, pk.bt.data() + c0, pk.cols_pad,
                             pa, pk.dp);
    simd::gemm_bcast<T>(pk.dp, kRows, kCols, pk.a.data() + r0 * pk.dp, 1, pk.dp, tile, kCols,
                        pbt + c0, pk.cols_pad);
  }
}

void solosim_backward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                          const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    const Packed<scalar_t> pk(a, b, scale);
    const int64_t n = pk.n, d = pk.d, dp = pk.dp, blocks = pk.blocks();
    std::vector<scalar_t> lse_pad(pk.rows_pad, std::numeric_limits<scalar_t>::infinity());
    std::copy_n(lse.data_ptr<scalar_t>(), n, lse_pad.begin());
    std::vector<acc_t> pa_acc(pk.rows_pad * dp, acc_t(0));
    // pb sums over every row block: each part keeps its own partial sum, added in part order.
    const int64_t parts = std::min<int64_t>(blocks, std::max<int64_t>(8, at::get_num_threads()));
    std::vector<scalar_t> pbt(parts * dp * pk.cols_pad, scalar_t(0));
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      std::vector<scalar_t> tile(kRows * kCols);
      for (int64_t part = part_begin; part < part_end; ++part) {
        for (int64_t blk = part * blocks / parts; blk < (part + 1) * blocks / parts; ++blk) {
          backward_block<scalar_t, acc_t>(pk, blk * kRows, lse_pad.data() + blk * kRows,
                                          tile.data(), pa_acc.data() + blk * kRows * dp,
                                          pbt.data() + part * dp * pk.cols_pad);
        }
      }
    });
    scalar_t* out_a = pa.data_ptr<scalar_t>();
    scalar_t* out_b = pb.data_ptr<scalar_t>();
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t f = 0; f < d; ++f) {
        for (int64_t i = i0; i < i1; ++i) {
          out_a[i * d + f] = static_cast<scalar_t>(pa_acc[i * dp + f]);
          acc_t s = 0;
          for (int64_t part = 0; part < parts; ++part) s += pbt[(part * dp + f) * pk.cols_pad + i];
          out_b[i * d + f] = static_cast<scalar_t>(s);
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("solosim", &Bind<solosim_with, solosim_forward_cpu>::op);
  m.impl("solosim_backward", &Bind<solosim_backward_with, solosim_backward_cpu>::op);
}

}  // namespace mmfast
