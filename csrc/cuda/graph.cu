// CUDA kernel of the graph ops: a group of GROUP lanes (4..32, sized to d) owns one output
// row; each lane holds VEC consecutive features and loads them as one vector (16 bytes for
// float when d % 4 == 0, e.g. d = 64 -> 16 lanes x float4). The group loads GROUP
// (col, val) pairs at once and broadcasts them by shuffles. No atomics: deterministic.
// The CSR is not validated on the device (that would cost a device->host read per call): a
// row's range is clamped to [0, nnz] and columns outside [0, n_cols) are skipped, so a corrupt
// CSR from a direct torch.ops caller gives meaningless rows but never reads out of bounds.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../bind.h"
#include "../graph.h"

namespace mmfast {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

template <typename scalar_t, typename index_t, int VEC, int GROUP>
__global__ void __launch_bounds__(kThreads)
spmm_csr_kernel(const int64_t* __restrict__ rowptr, const index_t* __restrict__ col,
                const scalar_t* __restrict__ val, const scalar_t* __restrict__ x,
                const scalar_t* __restrict__ addend, scalar_t* __restrict__ out, scalar_t alpha,
                scalar_t beta, int64_t n_rows, int64_t n_cols, int64_t nnz, int64_t d) {
  using V = Vec<scalar_t, VEC>;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / GROUP;
  if (row >= n_rows) return;  // a group shares its row, so groups leave whole
  const int lane = threadIdx.x % GROUP;
  const unsigned mask =
      GROUP == 32 ? 0xffffffffu : ((1u << GROUP) - 1u) << (threadIdx.x % 32 / GROUP * GROUP);
  const int64_t begin = min(max(rowptr[row], int64_t(0)), nnz);
  const int64_t end = min(max(rowptr[row + 1], begin), nnz);

  for (int64_t f0 = 0; f0 < d; f0 += GROUP * VEC) {
    const int64_t f = f0 + lane * VEC;
    const bool active = f < d;
    scalar_t acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = scalar_t(0);

    for (int64_t j0 = begin; j0 < end; j0 += GROUP) {
      const int64_t j = j0 + lane;
      const int64_t my_col = j < end ? static_cast<int64_t>(col[j]) : 0;
      const scalar_t my_val = j < end ? val[j] : scalar_t(0);
      const int n = static_cast<int>(min(static_cast<int64_t>(GROUP), end - j0));
#pragma unroll 4
      for (int k = 0; k < n; ++k) {
        const int64_t c = __shfl_sync(mask, my_col, k, GROUP);
        const scalar_t v = __shfl_sync(mask, my_val, k, GROUP);
        // c is the same for the whole group: a skipped column is a uniform branch.
        if (active && static_cast<uint64_t>(c) < static_cast<uint64_t>(n_cols)) {
          const V xv = *reinterpret_cast<const V*>(x + c * d + f);
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] += v * xv.v[i];
        }
      }
    }
    if (active) {
      V o;
      if (addend != nullptr) {
        const V a = *reinterpret_cast<const V*>(addend + row * d + f);
#pragma unroll
        for (int i = 0; i < VEC; ++i) o.v[i] = alpha * acc[i] + beta * a.v[i];
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) o.v[i] = alpha * acc[i];
      }
      *reinterpret_cast<V*>(out + row * d + f) = o;
    }
  }
}

template <typename scalar_t, typename index_t, int VEC>
void launch_with_vec(const Csr& g, const scalar_t* x, const scalar_t* addend, scalar_t alpha,
                     scalar_t beta, scalar_t* out, int64_t d) {
  int group = 4;  // the fewest lanes (up to a warp) that cover d in one pass
  while (group < 32 && group * VEC < d) group *= 2;
  const int64_t blocks = (g.n_rows * group + kThreads - 1) / kThreads;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* rowptr = g.rowptr.data_ptr<int64_t>();
  const index_t* col = g.col.data_ptr<index_t>();
  const scalar_t* val = g.val.data_ptr<scalar_t>();
#define MMFAST_LAUNCH(G)                                                                  \
  spmm_csr_kernel<scalar_t, index_t, VEC, G><<<blocks, kThreads, 0, stream>>>(            \
      rowptr, col, val, x, addend, out, alpha, beta, g.n_rows, g.n_cols, g.col.numel(), d)
  switch (group) {
    case 4: MMFAST_LAUNCH(4); break;
    case 8: MMFAST_LAUNCH(8); break;
    case 16: MMFAST_LAUNCH(16); break;
    default: MMFAST_LAUNCH(32); break;
  }
#undef MMFAST_LAUNCH
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

void spmm_kernel_cuda(const Csr& g, const at::Tensor& x, const at::Tensor& addend, double alpha,
                      double beta, at::Tensor& out) {
  const int64_t d = x.size(1);
  if (g.n_rows == 0 || d == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const bool add = addend.defined() && beta != 0.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmfast_spmm_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(g.col.scalar_type(), "mmfast_spmm_cuda", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* ap = add ? addend.data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.data_ptr<scalar_t>();
      const auto a = static_cast<scalar_t>(alpha), b = static_cast<scalar_t>(beta);
      // Widest vector (16 bytes) that divides d and the three base addresses.
      constexpr int kMaxVec = 16 / sizeof(scalar_t);
      auto fits = [&](int vec) {
        const size_t bytes = vec * sizeof(scalar_t);
        return d % vec == 0 && aligned(xp, bytes) && aligned(ap, bytes) && aligned(op, bytes);
      };
      if (kMaxVec >= 4 && fits(4)) {
        launch_with_vec<scalar_t, index_t, (kMaxVec >= 4 ? 4 : 1)>(g, xp, ap, a, b, op, d);
      } else if (fits(2)) {
        launch_with_vec<scalar_t, index_t, 2>(g, xp, ap, a, b, op, d);
      } else {
        launch_with_vec<scalar_t, index_t, 1>(g, xp, ap, a, b, op, d);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("spmm", &Bind<spmm_with, spmm_kernel_cuda>::op);
  m.impl("propagate", &Bind<propagate_with, spmm_kernel_cuda>::op);
}

}  // namespace mmfast
