// CUDA kernels of SoloSim, flash-attention style on CUDA cores: each thread owns one row of
// its side (kRows rows per block), tiles of kTile rows of the other side are staged in shared
// memory, and the logits of a tile live only in registers. To fill the GPU at moderate n the
// other side is split into `splits` ranges (grid.y); each split writes a partial result that
// the driver combines with O(n d) tensor ops in a fixed order: deterministic, no atomics.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "../bind.h"
#include "../solosim.h"

namespace mmfast {
namespace {

constexpr int kRows = 128;   // threads per block = own rows per block
constexpr int kTile = 32;    // rows of the other side per shared-memory tile
constexpr int kChunk = 32;   // features of the own row held in registers at a time
constexpr int kMaxSplits = 16;

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() { return -INFINITY; }

// Logits of this thread's own row against the staged tile: s[j] = scale * <own, tile_j>.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void tile_logits(const scalar_t* __restrict__ own, bool own_valid,
                                            const scalar_t* tile, int64_t d, acc_t scale,
                                            acc_t (&s)[kTile]) {
#pragma unroll
  for (int j = 0; j < kTile; ++j) s[j] = 0;
  for (int64_t c0 = 0; c0 < d; c0 += kChunk) {
    const int width = static_cast<int>(min(static_cast<int64_t>(kChunk), d - c0));
    acc_t reg[kChunk];
#pragma unroll
    for (int u = 0; u < kChunk; ++u) reg[u] = (own_valid && u < width) ? acc_t(own[c0 + u]) : 0;
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      const scalar_t* t = tile + j * d + c0;
      acc_t acc = 0;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        if (u < width) acc += reg[u] * acc_t(t[u]);
      }
      s[j] += acc;
    }
  }
#pragma unroll
  for (int j = 0; j < kTile; ++j) s[j] *= scale;
}

// Stages rows [t0, t0 + kTile) of `other` (zeros past n) into shared memory, [kTile][d].
template <typename scalar_t>
__device__ __forceinline__ void stage_tile(const scalar_t* __restrict__ other, int64_t t0,
                                           int64_t n, int64_t d, scalar_t* tile) {
  const int64_t total = kTile * d, base = t0 * d, limit = n * d;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    tile[i] = base + i < limit ? other[base + i] : scalar_t(0);
  }
}

// Forward: per (row, split), the running max and rescaled sum of exp(logits) over the split.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRows)
solosim_forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n,
                       int64_t d, acc_t scale, int64_t per_split, acc_t* __restrict__ part_max,
                       acc_t* __restrict__ part_sum) {
  extern __shared__ unsigned char smem_raw[];
  scalar_t* tile = reinterpret_cast<scalar_t*>(smem_raw);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  const bool valid = row < n;
  const scalar_t* own = a + (valid ? row : 0) * d;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * per_split, k1 = min(n, k0 + per_split);
  acc_t run_max = neg_inf<acc_t>(), run_sum = 0;
  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    __syncthreads();
    stage_tile(b, t0, n, d, tile);
    __syncthreads();
    acc_t s[kTile];
    tile_logits<scalar_t, acc_t>(own, valid, tile, d, scale, s);
    const int count = static_cast<int>(min(static_cast<int64_t>(kTile), k1 - t0));
    acc_t tile_max = neg_inf<acc_t>();
#pragma unroll
    for (int j = 0; j < kTile; ++j) if (j < count) tile_max = max(tile_max, s[j]);
    const acc_t new_max = max(run_max, tile_max);
    acc_t sum = 0;
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

// Backward: acc[row] = sum_j P(row, j) other_j over the split, P = exp(logit - lse) with lse
// taken at the own row (pass over a: pa = P b) or at the tile row (pass over b: pb = P^T a).
// The accumulator lives in shared memory, [d][kRows], written out as part[split][d][n].
template <typename scalar_t, typename acc_t, bool kLseOfTile>
__global__ void __launch_bounds__(kRows)
solosim_backward_kernel(const scalar_t* __restrict__ own_side,
                        const scalar_t* __restrict__ other_side, const scalar_t* __restrict__ lse,
                        int64_t n, int64_t d, acc_t scale, int64_t per_split,
                        acc_t* __restrict__ part) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* acc = reinterpret_cast<acc_t*>(smem_raw);  // [d][kRows]
  scalar_t* tile = reinterpret_cast<scalar_t*>(acc + d * kRows);
  acc_t* tile_lse = reinterpret_cast<acc_t*>(tile + kTile * d);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  const bool valid = row < n;
  const scalar_t* own = own_side + (valid ? row : 0) * d;
  const acc_t own_lse = valid ? acc_t(lse[row]) : acc_t(0);
  for (int64_t f = 0; f < d; ++f) acc[f * kRows + threadIdx.x] = 0;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * per_split, k1 = min(n, k0 + per_split);
  for (int64_t t0 = k0; t0 < k1; t0 += kTile) {
    __syncthreads();
    stage_tile(other_side, t0, n, d, tile);
    if (kLseOfTile && threadIdx.x < kTile) {
      tile_lse[threadIdx.x] = t0 + threadIdx.x < n ? acc_t(lse[t0 + threadIdx.x]) : acc_t(0);
    }
    __syncthreads();
    acc_t p[kTile];
    tile_logits<scalar_t, acc_t>(own, valid, tile, d, scale, p);
    const int count = static_cast<int>(min(static_cast<int64_t>(kTile), k1 - t0));
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      p[j] = (valid && j < count) ? exp(p[j] - (kLseOfTile ? tile_lse[j] : own_lse)) : acc_t(0);
    }
    for (int64_t c0 = 0; c0 < d; c0 += kChunk) {
      const int width = static_cast<int>(min(static_cast<int64_t>(kChunk), d - c0));
      acc_t reg[kChunk];
#pragma unroll
      for (int u = 0; u < kChunk; ++u) reg[u] = u < width ? acc[(c0 + u) * kRows + threadIdx.x] : 0;
#pragma unroll 4
      for (int j = 0; j < kTile; ++j) {
        const scalar_t* t = tile + j * d + c0;
#pragma unroll
        for (int u = 0; u < kChunk; ++u) {
          if (u < width) reg[u] += p[j] * acc_t(t[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        if (u < width) acc[(c0 + u) * kRows + threadIdx.x] = reg[u];
      }
    }
  }
  __syncthreads();
  if (valid) {
    for (int64_t f = 0; f < d; ++f) part[(blockIdx.y * d + f) * n + row] = acc[f * kRows + threadIdx.x];
  }
}

struct Grid {
  int64_t row_blocks, splits, per_split;
};

// Enough (row block, split) pairs for ~4 blocks per SM, splits a whole number of tiles.
Grid make_grid(int64_t n) {
  const int64_t row_blocks = (n + kRows - 1) / kRows;
  const int64_t tiles = (n + kTile - 1) / kTile;
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  const int64_t want = (4 * static_cast<int64_t>(count) + row_blocks - 1) / row_blocks;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, tiles, kMaxSplits}));
  const int64_t per_split = (tiles + splits - 1) / splits * kTile;
  return {row_blocks, (n + per_split - 1) / per_split, per_split};
}

void set_smem(const void* kernel, size_t bytes) {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), "solosim: d is too large for the CUDA kernel (",
              bytes, " bytes of shared memory needed, the device allows ", optin,
              "); use backend='torch' or a smaller d");
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

void solosim_forward_cuda(const at::Tensor& a, const at::Tensor& b, double scale,
                          at::Tensor& lse) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), d = a.size(1);
  const Grid g = make_grid(n);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto acc_opts = a.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor part_max = at::empty({g.splits, n}, acc_opts);
    at::Tensor part_sum = at::empty({g.splits, n}, acc_opts);
    const size_t smem = kTile * d * sizeof(scalar_t);
    auto kernel = solosim_forward_kernel<scalar_t, acc_t>;
    set_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<dim3(g.row_blocks, g.splits), kRows, smem, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n, d, static_cast<acc_t>(scale),
        g.per_split, part_max.data_ptr<acc_t>(), part_sum.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Combine the splits: lse = logsumexp_s (max_s + log sum_s); every split holds >= 1 logit.
    lse.copy_(at::logsumexp(part_max + part_sum.log(), 0));
  });
}

void solosim_backward_cuda(const at::Tensor& a, const at::Tensor& b, double scale,
                           const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), d = a.size(1);
  const Grid g = make_grid(n);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto acc_opts = a.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const size_t smem = d * kRows * sizeof(acc_t) + kTile * d * sizeof(scalar_t) +
                        kTile * sizeof(acc_t) + 16;
    at::Tensor part = at::empty({g.splits, d, n}, acc_opts);
    auto launch = [&](auto kernel, const at::Tensor& own, const at::Tensor& other,
                      at::Tensor& out) {
      set_smem(reinterpret_cast<const void*>(kernel), smem);
      kernel<<<dim3(g.row_blocks, g.splits), kRows, smem, stream>>>(
          own.data_ptr<scalar_t>(), other.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), n, d,
          static_cast<acc_t>(scale), g.per_split, part.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      out.copy_(part.sum(0).t());
    };
    launch(solosim_backward_kernel<scalar_t, acc_t, false>, a, b, pa);  // pa = P b
    launch(solosim_backward_kernel<scalar_t, acc_t, true>, b, a, pb);   // pb = P^T a
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("solosim", &Bind<solosim_with, solosim_forward_cuda>::op);
  m.impl("solosim_backward", &Bind<solosim_backward_with, solosim_backward_cuda>::op);
}

}  // namespace mmfast
