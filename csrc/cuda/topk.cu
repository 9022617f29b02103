// CUDA kernel of topk_scores, in two launches.
//
// 1. score_select: a block of 8 warps owns 32 queries (4 per warp) and one contiguous range
//    of key tiles (blockIdx.y splits the keys when there are too few query blocks to fill
//    the GPU). Per tile of 128 keys it stages keys and queries through shared memory in
//    32-wide slices of d (16-byte key loads when d and the pointer allow) and accumulates the
//    32 x 128 scores in registers (4 x 4 per lane, summed in d order, so a score does not
//    depend on the tiling). Excluded keys: a row whose exclude columns are sorted (those of
//    SparseGraph.from_coo and of the dataset's splits are) is walked once by a per-query cursor, tile by tile, as the CPU
//    does; an unsorted row (a raw CSR may hold one) is rescanned for every tile, which is
//    correct but costs n_tiles x nnz. Each warp then filters its
//    queries' scores against the running k-th best: survivors are appended, in ascending key
//    order, to a per-(query, split) candidate list of capacity 2k + 128 in global memory;
//    when the next tile might not fit, the warp cuts the list to its k best by a radix select
//    on the scores' bit patterns (ties: the first, i.e. smallest, indices), which keeps the
//    list in key order. Nothing of size queries x keys is written.
// 2. merge_sort: one block per query gathers the (<= k per split) survivors of all splits
//    and bitonic-sorts them in shared memory by (score desc, index asc); writes k, padded
//    with -inf / -1.
// No atomics on results and no order-dependent reductions: deterministic.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../bind.h"
#include "../topk.h"

namespace mmfast {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kQueriesPerWarp = 4;
constexpr int kQueryBlock = kWarps * kQueriesPerWarp;  // 32 queries per block
constexpr int kKeysPerLane = 4;
constexpr int kKeyTile = 32 * kKeysPerLane;  // 128 keys per tile
constexpr int kSlice = 32;                   // features staged per step
constexpr int kMaxMerge = 4096;              // candidates one merge block sorts
constexpr int kMergeThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// Bit patterns that order like the floats they encode (NaN never reaches them); -0.0 maps
// to +0.0's pattern, since the two compare equal.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long order_key(double x) {
  const unsigned long long u =
      static_cast<unsigned long long>(__double_as_longlong(x == 0.0 ? 0.0 : x));
  return (u >> 63) ? ~u : (u | (1ull << 63));
}
__device__ __forceinline__ float from_order_key(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
__device__ __forceinline__ double from_order_key(unsigned long long key) {
  return __longlong_as_double(
      static_cast<long long>((key >> 63) ? (key & ~(1ull << 63)) : ~key));
}

// A 16-byte vector of scalar_t and its elements.
template <typename scalar_t> struct Vec16;
template <> struct Vec16<float> {
  using type = float4;
  __device__ static void unpack(const float4& x, float (&v)[4]) {
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  }
};
template <> struct Vec16<double> {
  using type = double2;
  __device__ static void unpack(const double2& x, double (&v)[2]) { v[0] = x.x; v[1] = x.y; }
};

__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Cuts val/idx[0, n) (n > k, ascending indices) to its k best in place, keeping index order;
// ties at the k-th score keep the smallest indices. Returns the k-th best score.
// All 32 lanes of the warp call it.
template <typename scalar_t>
__device__ __noinline__ scalar_t warp_cut(scalar_t* val, int32_t* idx, int n, int k) {
  using key_t = decltype(order_key(scalar_t(0)));
  const int lane = threadIdx.x % 32;
  const unsigned lanes_below = (1u << lane) - 1u;
  __syncwarp();  // the appends of every lane are visible
  // The largest T with #{key >= T} >= k, one bit at a time from the top: the k-th best key.
  key_t kth = 0;
  for (int bit = sizeof(key_t) * 8 - 1; bit >= 0; --bit) {
    const key_t candidate = kth | (key_t(1) << bit);
    int c = 0;
    for (int e = lane; e < n; e += 32) c += order_key(val[e]) >= candidate;
    if (warp_sum(c) >= k) kth = candidate;
  }
  int greater = 0;
  for (int e = lane; e < n; e += 32) greater += order_key(val[e]) > kth;
  int ties_left = k - warp_sum(greater);
  int out = 0;
  for (int base = 0; base < n; base += 32) {
    const int e = base + lane;
    const bool in = e < n;
    const scalar_t v = in ? val[e] : scalar_t(0);
    const int32_t id = in ? idx[e] : 0;
    const key_t key = order_key(v);
    const bool eq = in && key == kth;
    const unsigned eq_lanes = __ballot_sync(kFull, eq);
    const bool keep = (in && key > kth) || (eq && __popc(eq_lanes & lanes_below) < ties_left);
    const unsigned keep_lanes = __ballot_sync(kFull, keep);
    __syncwarp();  // the chunk is read before anyone writes (writes land at or below it)
    if (keep) {
      const int pos = out + __popc(keep_lanes & lanes_below);
      val[pos] = v;
      idx[pos] = id;
    }
    out += __popc(keep_lanes);
    ties_left -= min(__popc(eq_lanes), ties_left);
    __syncwarp();
  }
  return from_order_key(kth);
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
score_select_kernel(const scalar_t* __restrict__ queries, const scalar_t* __restrict__ keys,
                    int64_t n_queries, int64_t n_keys, int64_t d, int k,
                    const int64_t* __restrict__ ex_rowptr, const index_t* __restrict__ ex_col,
                    int64_t ex_nnz, int64_t tiles_per_split, int64_t n_tiles, int cap, bool vec,
                    scalar_t* __restrict__ buf_val, int32_t* __restrict__ buf_idx,
                    int32_t* __restrict__ buf_count) {
  __shared__ scalar_t key_s[kSlice][kKeyTile + 1];  // transposed: lanes read along keys
  __shared__ scalar_t query_s[kQueryBlock][kSlice];
  __shared__ uint32_t excluded_s[kWarps][kQueriesPerWarp][kKeysPerLane];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kQueryBlock;
  const int n_splits = gridDim.y, split = blockIdx.y;
  const int64_t tile_begin = split * tiles_per_split;
  const int64_t tile_end = min(n_tiles, tile_begin + tiles_per_split);
  const scalar_t neg_inf = -static_cast<scalar_t>(INFINITY);

  int count[kQueriesPerWarp];
  scalar_t threshold[kQueriesPerWarp];
  bool full[kQueriesPerWarp];
  // The exclude row: [cursor, ex_end) not yet passed when `sorted`, else the whole row.
  int64_t cursor[kQueriesPerWarp], ex_end[kQueriesPerWarp];
  bool sorted[kQueriesPerWarp];
#pragma unroll
  for (int r = 0; r < kQueriesPerWarp; ++r) {
    count[r] = 0;
    threshold[r] = neg_inf;
    full[r] = false;
    cursor[r] = ex_end[r] = 0;
    sorted[r] = true;
    const int64_t q = q0 + warp * kQueriesPerWarp + r;
    if (ex_rowptr != nullptr && q < n_queries) {  // uniform across the warp
      // The CSR is not validated on the device (see topk.cpp): rows are clamped to [0, nnz]
      // and ids outside a tile (out-of-range ones included) are skipped, so a corrupt one can
      // give wrong results but never reads out of bounds.
      cursor[r] = min(max(ex_rowptr[q], int64_t(0)), ex_nnz);
      ex_end[r] = min(max(ex_rowptr[q + 1], cursor[r]), ex_nnz);
      bool ok = true;
      for (int64_t e = cursor[r] + lane; e + 1 < ex_end[r]; e += 32) ok &= ex_col[e] <= ex_col[e + 1];
      sorted[r] = __all_sync(kFull, ok);
    }
  }
  if (lane < kQueriesPerWarp * kKeysPerLane)
    excluded_s[warp][lane / kKeysPerLane][lane % kKeysPerLane] = 0u;
  __syncwarp();

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t k0 = tile * kKeyTile;
    scalar_t acc[kQueriesPerWarp][kKeysPerLane];
#pragma unroll
    for (int r = 0; r < kQueriesPerWarp; ++r)
#pragma unroll
      for (int i = 0; i < kKeysPerLane; ++i) acc[r][i] = scalar_t(0);

    for (int64_t f0 = 0; f0 < d; f0 += kSlice) {
      __syncthreads();  // everyone is done with the previous slice
      if (vec) {  // 16-byte loads: d % (16 / sizeof) == 0 and keys aligned (uniform)
        constexpr int kVec = 16 / sizeof(scalar_t), kPerRow = kSlice / kVec;
        using V = typename Vec16<scalar_t>::type;
#pragma unroll
        for (int i = 0; i < kKeyTile * kPerRow / kThreads; ++i) {
          const int e = threadIdx.x + i * kThreads, j = e / kPerRow, t = e % kPerRow * kVec;
          const int64_t key = k0 + j, f = f0 + t;
          scalar_t v[kVec];
          if (key < n_keys && f < d) {  // f < d and d % kVec == 0: the whole vector is in
            const V x = *reinterpret_cast<const V*>(keys + key * d + f);
            Vec16<scalar_t>::unpack(x, v);
          } else {
#pragma unroll
            for (int u = 0; u < kVec; ++u) v[u] = scalar_t(0);
          }
#pragma unroll
          for (int u = 0; u < kVec; ++u) key_s[t + u][j] = v[u];
        }
      } else {
        for (int e = threadIdx.x; e < kKeyTile * kSlice; e += kThreads) {
          const int j = e / kSlice, t = e % kSlice;
          const int64_t key = k0 + j, f = f0 + t;
          key_s[t][j] = (key < n_keys && f < d) ? keys[key * d + f] : scalar_t(0);
        }
      }
      for (int e = threadIdx.x; e < kQueryBlock * kSlice; e += kThreads) {
        const int r = e / kSlice, t = e % kSlice;
        const int64_t q = q0 + r, f = f0 + t;
        query_s[r][t] = (q < n_queries && f < d) ? queries[q * d + f] : scalar_t(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int t = 0; t < kSlice; ++t) {
        scalar_t kv[kKeysPerLane], qv[kQueriesPerWarp];
#pragma unroll
        for (int i = 0; i < kKeysPerLane; ++i) kv[i] = key_s[t][lane + 32 * i];
#pragma unroll
        for (int r = 0; r < kQueriesPerWarp; ++r) qv[r] = query_s[warp * kQueriesPerWarp + r][t];
#pragma unroll
        for (int r = 0; r < kQueriesPerWarp; ++r)
#pragma unroll
          for (int i = 0; i < kKeysPerLane; ++i) acc[r][i] = fma(qv[r], kv[i], acc[r][i]);
      }
    }

#pragma unroll
    for (int r = 0; r < kQueriesPerWarp; ++r) {
      const int64_t q = q0 + warp * kQueriesPerWarp + r;
      if (q >= n_queries) continue;  // uniform across the warp
      const int64_t slot = q * n_splits + split;
      scalar_t* val = buf_val + slot * cap;
      int32_t* idx = buf_idx + slot * cap;
      if (ex_rowptr != nullptr) {  // mark this tile's excluded keys, one bit each
        if (sorted[r]) {
          // Pass the entries below this tile's end (a prefix of each 32-entry chunk, the row
          // being sorted), marking those inside it; stop at the first chunk that reaches past.
          int64_t c = cursor[r];
          while (c < ex_end[r]) {  // c is uniform across the warp
            const int64_t e = c + lane;
            const int64_t id = e < ex_end[r] ? static_cast<int64_t>(ex_col[e]) - k0 : kKeyTile;
            const bool below = id < kKeyTile;
            if (below && id >= 0) atomicOr(&excluded_s[warp][r][id / 32], 1u << (id % 32));
            const unsigned passed = __ballot_sync(kFull, below);
            c += __popc(passed);
            if (passed != kFull) break;
          }
          cursor[r] = c;
        } else {
          for (int64_t e = cursor[r] + lane; e < ex_end[r]; e += 32) {
            const int64_t id = static_cast<int64_t>(ex_col[e]) - k0;
            if (id >= 0 && id < kKeyTile) atomicOr(&excluded_s[warp][r][id / 32], 1u << (id % 32));
          }
        }
        __syncwarp();
      }
      if (count[r] + kKeyTile > cap) {
        threshold[r] = warp_cut(val, idx, count[r], k);
        count[r] = k;
        full[r] = true;
      }
#pragma unroll
      for (int i = 0; i < kKeysPerLane; ++i) {
        const int64_t key = k0 + lane + 32 * i;
        const scalar_t s = acc[r][i];
        const bool excluded = (excluded_s[warp][r][i] >> lane) & 1u;
        // A later key never wins a tie; NaN fails both tests.
        const bool take = key < n_keys && !excluded &&
                          (s > threshold[r] || (!full[r] && s == s));
        const unsigned take_lanes = __ballot_sync(kFull, take);
        if (take) {
          const int pos = count[r] + __popc(take_lanes & ((1u << lane) - 1u));
          val[pos] = s;
          idx[pos] = static_cast<int32_t>(key);
        }
        count[r] += __popc(take_lanes);
      }
      if (ex_rowptr != nullptr) {
        __syncwarp();
        if (lane < kKeysPerLane) excluded_s[warp][r][lane] = 0u;
        __syncwarp();
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kQueriesPerWarp; ++r) {
    const int64_t q = q0 + warp * kQueriesPerWarp + r;
    if (q >= n_queries) continue;
    const int64_t slot = q * n_splits + split;
    if (count[r] > k) {
      warp_cut(buf_val + slot * cap, buf_idx + slot * cap, count[r], k);
      count[r] = k;
    }
    if (lane == 0) buf_count[slot] = count[r];
  }
}

template <typename scalar_t>
__device__ __forceinline__ bool better(scalar_t a, int32_t ia, scalar_t b, int32_t ib) {
  return a > b || (a == b && ia < ib);
}

// One block per query: gathers every split's survivors, sorts them, writes the k best.
template <typename scalar_t>
__global__ void __launch_bounds__(kMergeThreads)
merge_sort_kernel(const scalar_t* __restrict__ buf_val, const int32_t* __restrict__ buf_idx,
                  const int32_t* __restrict__ buf_count, int n_splits, int cap, int k,
                  int sort_size, scalar_t* __restrict__ values, int64_t* __restrict__ indices) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* sv = reinterpret_cast<scalar_t*>(smem_raw);
  int32_t* si = reinterpret_cast<int32_t*>(sv + sort_size);
  const int64_t q = blockIdx.x;
  const scalar_t neg_inf = -static_cast<scalar_t>(INFINITY);

  // Splits in order, each contributing its count; the rest are sentinels that sort last.
  int offset = 0;
  for (int s = 0; s < n_splits; ++s) {
    const int64_t slot = q * n_splits + s;
    const int n = buf_count[slot];
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
      sv[offset + e] = buf_val[slot * cap + e];
      si[offset + e] = buf_idx[slot * cap + e];
    }
    offset += n;
  }
  for (int e = offset + threadIdx.x; e < sort_size; e += blockDim.x) {
    sv[e] = neg_inf;
    si[e] = INT_MAX;
  }
  __syncthreads();

  for (int size = 2; size <= sort_size; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < sort_size; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool best_first = (i & size) == 0;
          const bool swap = best_first ? better(sv[j], si[j], sv[i], si[i])
                                       : better(sv[i], si[i], sv[j], si[j]);
          if (swap) {
            const scalar_t tv = sv[i];
            sv[i] = sv[j];
            sv[j] = tv;
            const int32_t ti = si[i];
            si[i] = si[j];
            si[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }

  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const bool real = i < offset;
    values[q * k + i] = real ? sv[i] : neg_inf;
    indices[q * k + i] = real ? static_cast<int64_t>(si[i]) : int64_t(-1);
  }
}

int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

void topk_kernel_cuda(const TopkProblem& p, at::Tensor& values, at::Tensor& indices) {
  const int64_t n_queries = p.queries.size(0), n_keys = p.keys.size(0), d = p.queries.size(1);
  const int64_t k = p.k;
  TORCH_CHECK(k <= kMaxMerge / 4, "topk_scores: k = ", k,
              " exceeds the CUDA kernel's limit of ", kMaxMerge / 4, "; run on CPU");
  TORCH_CHECK(n_keys < INT_MAX, "topk_scores: the CUDA kernel takes fewer than 2^31 - 1 keys, got ",
              n_keys);
  const c10::cuda::CUDAGuard guard(p.queries.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Split the keys across blocks when the query blocks alone would leave SMs idle; a split
  // must leave room for all splits' k survivors in one merge block.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                        p.queries.device().index()));
  const int64_t n_qblocks = (n_queries + kQueryBlock - 1) / kQueryBlock;
  const int64_t n_tiles = (n_keys + kKeyTile - 1) / kKeyTile;
  int64_t splits = (4 * static_cast<int64_t>(sms) + n_qblocks - 1) / n_qblocks;
  splits = std::max<int64_t>(1, std::min({splits, n_tiles, kMaxMerge / k, int64_t(65535)}));
  const int64_t tiles_per_split = std::max<int64_t>(1, (n_tiles + splits - 1) / splits);
  if (n_tiles > 0) splits = (n_tiles + tiles_per_split - 1) / tiles_per_split;
  const int cap = static_cast<int>(2 * k + kKeyTile);
  const int sort_size = static_cast<int>(next_pow2(std::max<int64_t>(1, splits * k)));

  auto opts = p.queries.options();
  at::Tensor buf_val = at::empty({n_queries * splits * cap}, opts);
  at::Tensor buf_idx = at::empty({n_queries * splits * cap}, opts.dtype(at::kInt));
  at::Tensor buf_count = at::empty({n_queries * splits}, opts.dtype(at::kInt));
  const auto index_type = p.has_exclude ? p.ex_col.scalar_type() : at::kLong;

  AT_DISPATCH_FLOATING_TYPES(p.queries.scalar_type(), "mmfast_topk_scores_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(index_type, "mmfast_topk_scores_cuda", [&] {
      const dim3 grid(static_cast<unsigned>(n_qblocks), static_cast<unsigned>(splits));
      score_select_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
          p.queries.data_ptr<scalar_t>(), p.keys.data_ptr<scalar_t>(), n_queries, n_keys, d,
          static_cast<int>(k), p.has_exclude ? p.ex_rowptr.data_ptr<int64_t>() : nullptr,
          p.has_exclude ? p.ex_col.data_ptr<index_t>() : nullptr,
          p.has_exclude ? p.ex_col.numel() : int64_t(0), tiles_per_split, n_tiles, cap,
          d % (16 / sizeof(scalar_t)) == 0 &&
              reinterpret_cast<uintptr_t>(p.keys.data_ptr()) % 16 == 0,
          buf_val.data_ptr<scalar_t>(), buf_idx.data_ptr<int32_t>(),
          buf_count.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    const size_t smem = static_cast<size_t>(sort_size) * (sizeof(scalar_t) + sizeof(int32_t));
    if (smem > 48 * 1024) {  // above the default limit (a larger kMaxMerge): opt in
      int optin = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                            p.queries.device().index()));
      TORCH_CHECK(smem <= static_cast<size_t>(optin), "topk_scores: the merge needs ", smem,
                  " bytes of shared memory, the device allows ", optin, "; use a smaller k");
      C10_CUDA_CHECK(cudaFuncSetAttribute(merge_sort_kernel<scalar_t>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    merge_sort_kernel<scalar_t><<<static_cast<unsigned>(n_queries), kMergeThreads, smem, stream>>>(
        buf_val.data_ptr<scalar_t>(), buf_idx.data_ptr<int32_t>(), buf_count.data_ptr<int32_t>(),
        static_cast<int>(splits), cap, static_cast<int>(k), sort_size,
        values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("topk_scores", &Bind<topk_scores_with, topk_kernel_cuda>::op);
}

}  // namespace mmfast
