// CUDA kernel of club_learn: all S Adam steps in ONE cooperative launch. Per step, each block
// walks its tiles of rows (one thread per row: forward, loss and backward of the tiny MLP,
// intermediates kept in shared memory as [feature][row]), reduces the tile's parameter
// gradient in shared memory (each thread owns a few parameters and sums over the tile's rows
// in order), and writes its block sum; after a grid-wide barrier the parameters are split
// over all threads, each summing the block partials in block order and applying Adam; a
// second barrier publishes the new parameters. No atomics: results are deterministic.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../bind.h"
#include "../club.h"

namespace mmfast {
namespace {

namespace cg = cooperative_groups;

struct ClubArgs {
  int64_t n, dx, h, dy, np;  // rows, dims, parameter count
  int64_t step0;
  int steps;
  double lr, beta1, beta2, eps;
};

// Shared-memory layout (acc_t): params [np], gradient accumulators [np], then per tile of R
// rows: X [dx][R], Y [dy][R], HID [2h][R], DOUT [2dy][R], DHID [2h][R], block loss [R].
__host__ __device__ inline int64_t club_smem_elems(const ClubArgs& a, int64_t R) {
  return 2 * a.np + R * (a.dx + a.dy + 2 * a.h + 2 * a.dy + 2 * a.h + 1);
}

template <typename scalar_t, typename acc_t>
__global__ void club_learn_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                  const scalar_t* __restrict__ w, scalar_t* params,
                                  scalar_t* exp_avg, scalar_t* exp_avg_sq, acc_t* partial,
                                  acc_t* partial_loss, scalar_t* losses, ClubArgs a) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ unsigned char smem_raw[];
  const int R = blockDim.x, tid = threadIdx.x;
  const int64_t dx = a.dx, h = a.h, dy = a.dy, np = a.np;
  const int64_t head = h * dx + h + dy * h + dy;
  acc_t* P = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* G = P + np;
  acc_t* X = G + np;
  acc_t* Y = X + dx * R;
  acc_t* HID = Y + dy * R;
  acc_t* DOUT = HID + 2 * h * R;
  acc_t* DHID = DOUT + 2 * dy * R;
  acc_t* LOSS = DHID + 2 * h * R;
  const int64_t tiles = (a.n + R - 1) / R;

  for (int it = 0; it < a.steps; ++it) {
    for (int64_t i = tid; i < np; i += R) {
      P[i] = params[i];
      G[i] = 0;
    }
    acc_t my_loss = 0;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
      const int64_t r0 = t * R;
      const int rows = static_cast<int>(min(static_cast<int64_t>(R), a.n - r0));
      __syncthreads();  // params loaded / previous tile's reduction done
      for (int64_t i = tid; i < rows * dx; i += R) X[(i % dx) * R + i / dx] = x[r0 * dx + i];
      for (int64_t i = tid; i < rows * dy; i += R) Y[(i % dy) * R + i / dy] = y[r0 * dy + i];
      __syncthreads();
      if (tid < rows) {
        const acc_t wr = w[r0 + tid];
        for (int hd = 0; hd < 2; ++hd) {
          const acc_t* W1 = P + hd * head;
          const acc_t* b1 = W1 + h * dx;
          for (int64_t k = 0; k < h; ++k) {
            acc_t z = b1[k];
            for (int64_t f = 0; f < dx; ++f) z += W1[k * dx + f] * X[f * R + tid];
            HID[(hd * h + k) * R + tid] = z > 0 ? z : acc_t(0);
          }
        }
        const acc_t* W2m = P + h * dx + h;
        const acc_t* b2m = W2m + dy * h;
        const acc_t* W2v = P + head + h * dx + h;
        const acc_t* b2v = W2v + dy * h;
        for (int64_t o = 0; o < dy; ++o) {
          acc_t mu = b2m[o], z = b2v[o];
          for (int64_t k = 0; k < h; ++k) {
            mu += W2m[o * h + k] * HID[k * R + tid];
            z += W2v[o * h + k] * HID[(h + k) * R + tid];
          }
          const acc_t lv = tanh(z), inv_var = exp(-lv), diff = mu - Y[o * R + tid];
          const acc_t q = diff * diff * inv_var;
          my_loss += wr * acc_t(0.5) * (q + lv);
          DOUT[o * R + tid] = wr * diff * inv_var;
          DOUT[(dy + o) * R + tid] = wr * acc_t(0.5) * (1 - q) * (1 - lv * lv);
        }
        for (int hd = 0; hd < 2; ++hd) {
          const acc_t* W2 = hd == 0 ? W2m : W2v;
          for (int64_t k = 0; k < h; ++k) {
            acc_t dh = 0;
            for (int64_t o = 0; o < dy; ++o) dh += W2[o * h + k] * DOUT[(hd * dy + o) * R + tid];
            DHID[(hd * h + k) * R + tid] = HID[(hd * h + k) * R + tid] > 0 ? dh : acc_t(0);
          }
        }
      }
      __syncthreads();
      // Each thread owns parameters i, i + R, ...: gradient = sum over the tile's rows.
      for (int64_t i = tid; i < np; i += R) {
        const int hd = i >= head;
        const int64_t j = i - hd * head;
        const acc_t* u;        // per-row factor from the output side
        const acc_t* v = nullptr;  // per-row input (nullptr: a bias)
        if (j < h * dx) {
          u = DHID + (hd * h + j / dx) * R;
          v = X + (j % dx) * R;
        } else if (j < h * dx + h) {
          u = DHID + (hd * h + (j - h * dx)) * R;
        } else if (j < h * dx + h + dy * h) {
          const int64_t jj = j - h * dx - h;
          u = DOUT + (hd * dy + jj / h) * R;
          v = HID + (hd * h + jj % h) * R;
        } else {
          u = DOUT + (hd * dy + (j - h * dx - h - dy * h)) * R;
        }
        acc_t sum = 0;
        if (v != nullptr) {
          for (int r = 0; r < rows; ++r) sum += u[r] * v[r];
        } else {
          for (int r = 0; r < rows; ++r) sum += u[r];
        }
        G[i] += sum;
      }
    }
    LOSS[tid] = my_loss;
    __syncthreads();
    for (int64_t i = tid; i < np; i += R) partial[blockIdx.x * np + i] = G[i];
    if (tid == 0) {
      acc_t total = 0;
      for (int r = 0; r < R; ++r) total += LOSS[r];
      partial_loss[blockIdx.x] = total;
    }
    grid.sync();
    // Adam (torch.optim.Adam's single-tensor formulas) on the summed gradient.
    const double t = static_cast<double>(a.step0 + it + 1);
    const acc_t step_size = static_cast<acc_t>(a.lr / (1 - pow(a.beta1, t)));
    const acc_t bc2_sqrt = static_cast<acc_t>(sqrt(1 - pow(a.beta2, t)));
    const acc_t w1 = static_cast<acc_t>(1 - a.beta1), b2 = static_cast<acc_t>(a.beta2);
    const acc_t w2 = static_cast<acc_t>(1 - a.beta2), eps = static_cast<acc_t>(a.eps);
    const int64_t gtid = static_cast<int64_t>(blockIdx.x) * R + tid;
    for (int64_t i = gtid; i < np; i += static_cast<int64_t>(gridDim.x) * R) {
      acc_t g = 0;
      for (int64_t blk = 0; blk < gridDim.x; ++blk) g += partial[blk * np + i];
      const acc_t m = acc_t(exp_avg[i]) + w1 * (g - acc_t(exp_avg[i]));
      const acc_t v = acc_t(exp_avg_sq[i]) * b2 + w2 * g * g;
      exp_avg[i] = static_cast<scalar_t>(m);
      exp_avg_sq[i] = static_cast<scalar_t>(v);
      params[i] = static_cast<scalar_t>(acc_t(params[i]) - step_size * m / (sqrt(v) / bc2_sqrt + eps));
    }
    if (gtid == 0) {
      acc_t total = 0;
      for (int64_t blk = 0; blk < gridDim.x; ++blk) total += partial_loss[blk];
      losses[it] = static_cast<scalar_t>(total);
    }
    grid.sync();
  }
}

void club_learn_kernel_cuda(const ClubShape& s, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& row_weight, at::Tensor& params, at::Tensor& exp_avg,
                            at::Tensor& exp_avg_sq, const AdamConfig& cfg, at::Tensor& losses) {
  const c10::cuda::CUDAGuard guard(x.device());
  int device = 0, sms = 0, coop = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(coop, "club_learn: the GPU does not support cooperative launches");
  TORCH_CHECK(cfg.steps <= INT32_MAX, "club_learn: steps must fit in int32");
  ClubArgs args{x.size(0), s.dx, s.h, s.dy, s.size(), cfg.step, static_cast<int>(cfg.steps),
                cfg.lr, cfg.beta1, cfg.beta2, cfg.eps};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmfast_club_learn_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    // The widest tile (rows per block) whose shared memory fits the device.
    int R = 256;
    while (R > 32 && club_smem_elems(args, R) * sizeof(acc_t) > static_cast<size_t>(optin)) R /= 2;
    const size_t smem = club_smem_elems(args, R) * sizeof(acc_t);
    TORCH_CHECK(smem <= static_cast<size_t>(optin), "club_learn: the q-net is too wide for the ",
                "CUDA kernel (", smem, " bytes of shared memory needed, the device allows ", optin,
                ")");
    auto kernel = club_learn_kernel<scalar_t, acc_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, R, smem));
    TORCH_CHECK(per_sm > 0, "club_learn: the CUDA kernel cannot be resident on this GPU");
    const int64_t tiles = (args.n + R - 1) / R;
    const int blocks = static_cast<int>(std::min(static_cast<int64_t>(tiles), static_cast<int64_t>(per_sm) * sms));
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor partial = at::empty({blocks, args.np}, acc_opts);
    at::Tensor partial_loss = at::empty({blocks}, acc_opts);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* wp = row_weight.data_ptr<scalar_t>();
    scalar_t* pp = params.data_ptr<scalar_t>();
    scalar_t* mp = exp_avg.data_ptr<scalar_t>();
    scalar_t* vp = exp_avg_sq.data_ptr<scalar_t>();
    acc_t* part = partial.data_ptr<acc_t>();
    acc_t* part_loss = partial_loss.data_ptr<acc_t>();
    scalar_t* out = losses.data_ptr<scalar_t>();
    void* kargs[] = {&xp, &yp, &wp, &pp, &mp, &vp, &part, &part_loss, &out, &args};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), blocks, R,
                                               kargs, smem, stream));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("club_learn", &Bind<club_learn_with, club_learn_kernel_cuda>::op);
}

}  // namespace mmfast
