// CUDA kernels of SoloSim, flash-attention style on CUDA cores: each thread owns one row of
// its side (kRows rows per block); tiles of kTile rows of the other side are staged in shared
// memory one slice of kWidth features at a time, so shared memory does not grow with d; the
// kTile logits of a row live in registers, summed with fma in d order, each 16-byte shared
// load feeding 4 multiply-adds per thread. The backward's accumulator sum_j P_ij other_j is a
// register slice of kWidth features per block (grid.z walks the slices), recomputing the
// logits per slice: any width works, and d <= kWidth (64 floats, 16 doubles) takes one pass.
// To fill the GPU at moderate n the other side is split into `splits` ranges (grid.y); each
// split writes a partial result that the driver combines with O(n d) tensor ops in a fixed
// order: deterministic, no atomics. Every register array is indexed by fully unrolled loops
// (no local memory; check with -Xptxas -v).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/Dispatch.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "../bind.h"
#include "../solosim.h"

namespace mmfast {
namespace {

constexpr int kRows = 128;   // threads per block = own rows per block
constexpr int kTile = 32;    // rows of the other side per tile
constexpr int kMaxSplits = 16;
// Features per staged slice and per backward accumulator: 64 floats or 16 doubles (the
// widest register accumulator that does not spill next to the kTile logits).
template <typename scalar_t>
constexpr int kWidth = sizeof(scalar_t) == 4 ? 64 : 16;

// Four consecutive values from 16-byte aligned shared memory.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 t0 = reinterpret_cast<const double2*>(p)[0];
  const double2 t1 = reinterpret_cast<const double2*>(p)[1];
  v[0] = t0.x; v[1] = t0.y; v[2] = t1.x; v[3] = t1.y;
}

// Stages features [c0, c0 + W) of rows [t0, t0 + kTile) of `other` (zeros past n and d).
template <typename scalar_t, int W>
__device__ __forceinline__ void stage_slice(const scalar_t* __restrict__ other, int64_t t0,
                                            int64_t n, int64_t d, int64_t c0,
                                            scalar_t (&tile)[kTile][W]) {
  static_assert(kTile * W % kRows == 0, "whole staging rounds");
#pragma unroll
  for (int i = 0; i < kTile * W / kRows; ++i) {
    const int e = threadIdx.x + i * kRows, j = e / W, u = e % W;
    const int64_t r = t0 + j, f = c0 + u;
    tile[j][u] = (r < n && f < d) ? other[r * d + f] : scalar_t(0);
  }
}

// s[j] += sum_u own[c0 + u] * tile[j][u] over the staged slice, u ascending.
template <typename scalar_t, int W>
__device__ __forceinline__ void add_logits(const scalar_t* __restrict__ own, bool own_valid,
                                           int64_t c0, int64_t d,
                                           const scalar_t (&tile)[kTile][W],
                                           scalar_t (&s)[kTile]) {
#pragma unroll 2
  for (int u = 0; u < W; u += 4) {
    scalar_t o[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      o[q] = (own_valid && c0 + u + q < d) ? own[c0 + u + q] : scalar_t(0);
    }
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      scalar_t t[4];
      load4(&tile[j][u], t);
#pragma unroll
      for (int q = 0; q < 4; ++q) s[j] = fma(o[q], t[q], s[j]);
    }
  }
}

// Forward: per (row, split), the running max and rescaled sum of exp(logits) over the split.
template <typename scalar_t>
__global__ void __launch_bounds__(kRows)
solosim_forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n,
                       int64_t d, scalar_t scale, int64_t per_split,
                       scalar_t* __restrict__ part_max, scalar_t* __restrict__ part_sum) {
  constexpr int W = kWidth<scalar_t>;
  __shared__ __align__(16) scalar_t tile[kTile][W];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  const bool valid = row < n;
  const scalar_t* own = a + (valid ? row : 0) * d;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * per_split, k1 = min(n, k0 + per_split);
  scalar_t run_max = -static_cast<scalar_t>(INFINITY), run_sum = 0;
  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    scalar_t s[kTile];
#pragma unroll
    for (int j = 0; j < kTile; ++j) s[j] = 0;
    for (int64_t c0 = 0; c0 < d; c0 += W) {
      __syncthreads();  // everyone is done with the previous slice
      stage_slice(b, t0, n, d, c0, tile);
      __syncthreads();
      add_logits(own, valid, c0, d, tile, s);
    }
    const int count = static_cast<int>(min(static_cast<int64_t>(kTile), k1 - t0));
    scalar_t tile_max = -static_cast<scalar_t>(INFINITY);
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      s[j] *= scale;
      if (j < count) tile_max = max(tile_max, s[j]);
    }
    const scalar_t new_max = max(run_max, tile_max);
    scalar_t sum = 0;
#pragma unroll
    for (int j = 0; j < kTile; ++j) if (j < count) sum += exp(s[j] - new_max);
    run_sum = run_sum * exp(run_max - new_max) + sum;
    run_max = new_max;
  }
  if (valid) {
    part_max[blockIdx.y * n + row] = run_max;
    part_sum[blockIdx.y * n + row] = run_sum;
  }
}

// Backward: acc[row] = sum_j P(row, j) other_j over the split, for this block's slice of
// features [f0, f0 + W) (f0 = blockIdx.z * W), P = exp(logit - lse) with lse taken at the own
// row (pass over a: pa = P b) or at the tile row (pass over b: pb = P^T a). Written out as
// part[split][d][n].
template <typename scalar_t, bool kLseOfTile>
__global__ void __launch_bounds__(kRows)
solosim_backward_kernel(const scalar_t* __restrict__ own_side,
                        const scalar_t* __restrict__ other_side, const scalar_t* __restrict__ lse,
                        int64_t n, int64_t d, scalar_t scale, int64_t per_split,
                        scalar_t* __restrict__ part) {
  constexpr int W = kWidth<scalar_t>;
  __shared__ __align__(16) scalar_t tile[kTile][W];
  __shared__ scalar_t tile_lse[kTile];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  const bool valid = row < n;
  const scalar_t* own = own_side + (valid ? row : 0) * d;
  const scalar_t own_lse = valid ? lse[row] : scalar_t(0);
  const int64_t f0 = static_cast<int64_t>(blockIdx.z) * W;
  const int64_t last_slice = (d - 1) / W * W;  // what the logit loop leaves staged
  scalar_t acc[W];
#pragma unroll
  for (int u = 0; u < W; ++u) acc[u] = 0;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * per_split, k1 = min(n, k0 + per_split);
  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    scalar_t p[kTile];
#pragma unroll
    for (int j = 0; j < kTile; ++j) p[j] = 0;
    for (int64_t c0 = 0; c0 < d; c0 += W) {
      __syncthreads();
      stage_slice(other_side, t0, n, d, c0, tile);
      if (kLseOfTile && c0 == 0 && threadIdx.x < kTile) {
        tile_lse[threadIdx.x] = t0 + threadIdx.x < n ? lse[t0 + threadIdx.x] : scalar_t(0);
      }
      __syncthreads();
      add_logits(own, valid, c0, d, tile, p);
    }
    if (f0 != last_slice) {  // uniform over the block
      __syncthreads();
      stage_slice(other_side, t0, n, d, f0, tile);
      __syncthreads();
    }
    const int count = static_cast<int>(min(static_cast<int64_t>(kTile), k1 - t0));
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      p[j] = (valid && j < count) ? exp(p[j] * scale - (kLseOfTile ? tile_lse[j] : own_lse))
                                  : scalar_t(0);
    }
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
#pragma unroll
      for (int u = 0; u < W; u += 4) {
        scalar_t t[4];
        load4(&tile[j][u], t);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[u + q] = fma(p[j], t[q], acc[u + q]);
      }
    }
  }
  if (valid) {
#pragma unroll
    for (int u = 0; u < W; ++u) {
      if (f0 + u < d) part[(blockIdx.y * d + f0 + u) * n + row] = acc[u];
    }
  }
}

struct Grid {
  int64_t row_blocks, splits, per_split;
};

// Enough (row block, split, slice) triples for ~4 blocks per SM, splits a whole number of
// tiles.
Grid make_grid(int64_t n, int64_t slices) {
  const int64_t row_blocks = (n + kRows - 1) / kRows;
  const int64_t tiles = (n + kTile - 1) / kTile;
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  const int64_t per_split_set = row_blocks * slices;
  const int64_t want = (4 * static_cast<int64_t>(count) + per_split_set - 1) / per_split_set;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, tiles, kMaxSplits}));
  const int64_t per_split = (tiles + splits - 1) / splits * kTile;
  return {row_blocks, (n + per_split - 1) / per_split, per_split};
}

void solosim_forward_cuda(const at::Tensor& a, const at::Tensor& b, double scale,
                          at::Tensor& lse) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), d = a.size(1);
  const Grid g = make_grid(n, 1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_cuda", [&] {
    at::Tensor part_max = at::empty({g.splits, n}, a.options());
    at::Tensor part_sum = at::empty({g.splits, n}, a.options());
    solosim_forward_kernel<scalar_t><<<dim3(g.row_blocks, g.splits), kRows, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n, d, static_cast<scalar_t>(scale),
        g.per_split, part_max.data_ptr<scalar_t>(), part_sum.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Combine the splits: lse = logsumexp_s (max_s + log sum_s); every split holds >= 1 logit.
    lse.copy_(at::logsumexp(part_max + part_sum.log(), 0));
  });
}

void solosim_backward_cuda(const at::Tensor& a, const at::Tensor& b, double scale,
                           const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb) {
  const int64_t n = a.size(0), d = a.size(1);
  if (d == 0) return;  // pa and pb are empty
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_backward_cuda", [&] {
    constexpr int W = kWidth<scalar_t>;
    const int64_t slices = (d + W - 1) / W;
    TORCH_CHECK(slices <= 65535, "solosim_backward: d = ", d, " exceeds the CUDA kernel's ",
                "limit of ", 65535 * W);
    const Grid g = make_grid(n, slices);
    at::Tensor part = at::empty({g.splits, d, n}, a.options());
    auto launch = [&](auto kernel, const at::Tensor& own, const at::Tensor& other,
                      at::Tensor& out) {
      kernel<<<dim3(g.row_blocks, g.splits, slices), kRows, 0, stream>>>(
          own.data_ptr<scalar_t>(), other.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), n, d,
          static_cast<scalar_t>(scale), g.per_split, part.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      out.copy_(part.sum(0).t());
    };
    launch(solosim_backward_kernel<scalar_t, false>, a, b, pa);  // pa = P b
    launch(solosim_backward_kernel<scalar_t, true>, b, a, pb);   // pb = P^T a
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("solosim", &Bind<solosim_with, solosim_forward_cuda>::op);
  m.impl("solosim_backward", &Bind<solosim_backward_with, solosim_backward_cuda>::op);
}

}  // namespace mmfast
