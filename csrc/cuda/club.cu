// CUDA kernel of club_learn: all S Adam steps in ONE cooperative launch. Per step, each block
// walks its tiles of R rows (one thread per row: forward, loss and backward of the small MLP)
// and sums the tile's parameter gradient over its rows (each thread owns a few parameters).
// Shared memory holds only what threads exchange, in [feature][R + 1] rows (the odd stride
// keeps the per-parameter sums over rows free of bank conflicts): a 32-feature slice of x (or
// a 16-output slice of y), the hidden layer and its gradient, and a 16-output slice of the
// output gradient. Its size depends on the hidden width only, so x_dim and y_dim are
// unbounded; the parameters are read from global memory (every thread of a block reads the
// same one: a broadcast). Each block adds its gradient, in double as the CPU does, into its
// own row of `partial`; after a grid-wide barrier every block takes column slices of 32
// parameters, its warps sum the block partials in a fixed interleave (coalesced reads), a
// warp adds the R / 32 sums in order and applies Adam; a second barrier publishes the new
// parameters. No atomics: results are deterministic.
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

constexpr int kIn = 32;   // features of x per staged slice
constexpr int kOut = 16;  // outputs (features of y) per slice

struct ClubArgs {
  int64_t n, dx, h, dy, np;  // rows, dims, parameter count
  int64_t step0;
  int steps;
  double lr, beta1, beta2, eps;
};

// Shared memory of a block of R threads: R doubles (the loss, then the Adam sums), then
// scalar_t rows of stride R + 1: IN [kIn], HID [2h], DH [2h], DOUT [2 kOut].
template <typename scalar_t>
size_t club_smem_bytes(int64_t h, int64_t R) {
  return R * sizeof(double) + (R + 1) * (kIn + 4 * h + 2 * kOut) * sizeof(scalar_t);
}

// Stages cols [c0, c0 + width) of rows [r0, r0 + rows) of src [*, ld] as dst[c][r].
template <typename scalar_t>
__device__ __forceinline__ void stage(const scalar_t* __restrict__ src, int64_t ld, int64_t r0,
                                      int rows, int64_t c0, int width, scalar_t* dst, int S) {
  for (int e = threadIdx.x; e < rows * width; e += blockDim.x) {
    const int r = e / width, c = e % width;
    dst[c * S + r] = src[(r0 + r) * ld + c0 + c];
  }
}

template <typename scalar_t>
__global__ void club_learn_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                  const scalar_t* __restrict__ w, scalar_t* params,
                                  scalar_t* exp_avg, scalar_t* exp_avg_sq, double* partial,
                                  scalar_t* losses, ClubArgs a) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int R = blockDim.x, S = R + 1, tid = threadIdx.x, lane = tid % 32;
  const int64_t dx = a.dx, h = a.h, dy = a.dy, np = a.np, stride = np + 1;
  const int64_t head = h * dx + h + dy * h + dy;  // one head's parameters
  const int64_t w1 = 0, b1 = h * dx, w2 = b1 + h, b2 = w2 + dy * h;  // offsets in a head
  double* DBL = reinterpret_cast<double*>(smem_raw);
  scalar_t* IN = reinterpret_cast<scalar_t*>(DBL + R);
  scalar_t* HID = IN + kIn * S;     // [2h]: both heads' hidden units (head-major)
  scalar_t* DH = HID + 2 * h * S;   // [2h]: d loss / d hidden pre-activation
  scalar_t* DOUT = DH + 2 * h * S;  // [2 kOut]: d loss / d mu, then d loss / d logvar input
  // params is read with ordinary loads: it changes between steps (other blocks write it
  // before a grid barrier), so it must not go through the read-only cache.
  const scalar_t* P = params;
  double* G = partial + blockIdx.x * stride;  // this block's gradient, then its loss
  const int64_t tiles = (a.n + R - 1) / R;

  for (int it = 0; it < a.steps; ++it) {
    for (int64_t i = tid; i < stride; i += R) G[i] = 0;
    double my_loss = 0;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
      const int64_t r0 = t * R;
      const int rows = static_cast<int>(min(static_cast<int64_t>(R), a.n - r0));
      const bool mine = tid < rows;
      __syncthreads();  // G zeroed / the previous tile is done with every buffer
      // Hidden layer: HID = relu(b1 + W1 x), x staged a slice at a time.
      if (mine) {
        for (int64_t k = 0; k < 2 * h; ++k) HID[k * S + tid] = P[(k / h) * head + b1 + k % h];
      }
      for (int64_t f0 = 0; f0 < dx; f0 += kIn) {
        const int fw = static_cast<int>(min(static_cast<int64_t>(kIn), dx - f0));
        __syncthreads();
        stage(x, dx, r0, rows, f0, fw, IN, S);
        __syncthreads();
        if (mine) {
          for (int64_t k = 0; k < 2 * h; ++k) {
            const scalar_t* W = P + (k / h) * head + w1 + (k % h) * dx + f0;
            scalar_t z = HID[k * S + tid];
            for (int f = 0; f < fw; ++f) z += W[f] * IN[f * S + tid];
            HID[k * S + tid] = z;
          }
        }
      }
      if (mine) {
        for (int64_t k = 0; k < 2 * h; ++k) {
          HID[k * S + tid] = max(HID[k * S + tid], scalar_t(0));
          DH[k * S + tid] = 0;
        }
      }
      // Outputs, loss and their gradients, kOut outputs at a time; each slice's W2 and b2
      // gradients are summed over the tile's rows before the next slice overwrites DOUT.
      for (int64_t o0 = 0; o0 < dy; o0 += kOut) {
        const int ow = static_cast<int>(min(static_cast<int64_t>(kOut), dy - o0));
        __syncthreads();
        stage(y, dy, r0, rows, o0, ow, IN, S);
        __syncthreads();
        if (mine) {
          const scalar_t wr = w[r0 + tid];
          const scalar_t* W2m = P + w2;
          const scalar_t* W2v = P + head + w2;
          for (int o = 0; o < ow; ++o) {
            const int64_t oo = o0 + o;
            scalar_t mu = P[b2 + oo], z = P[head + b2 + oo];
            for (int64_t k = 0; k < h; ++k) {
              mu += W2m[oo * h + k] * HID[k * S + tid];
              z += W2v[oo * h + k] * HID[(h + k) * S + tid];
            }
            const scalar_t lv = tanh(z), inv_var = exp(-lv), diff = mu - IN[o * S + tid];
            const scalar_t q = diff * diff * inv_var;
            my_loss += static_cast<double>(wr * scalar_t(0.5) * (q + lv));
            const scalar_t dmu = wr * diff * inv_var;
            const scalar_t dz = wr * scalar_t(0.5) * (1 - q) * (1 - lv * lv);
            DOUT[o * S + tid] = dmu;
            DOUT[(kOut + o) * S + tid] = dz;
            for (int64_t k = 0; k < h; ++k) {
              DH[k * S + tid] += W2m[oo * h + k] * dmu;
              DH[(h + k) * S + tid] += W2v[oo * h + k] * dz;
            }
          }
        }
        __syncthreads();
        // Per head, ow x h weights (k fastest, as in the flat layout) then ow biases.
        const int64_t per_head = ow * (h + 1);
        for (int64_t i = tid; i < 2 * per_head; i += R) {
          const int64_t hd = i / per_head, j = i % per_head;
          const scalar_t* u;
          const scalar_t* v = nullptr;  // nullptr: a bias
          int64_t param;
          if (j < ow * h) {
            u = DOUT + (hd * kOut + j / h) * S;
            v = HID + (hd * h + j % h) * S;
            param = hd * head + w2 + (o0 + j / h) * h + j % h;
          } else {
            u = DOUT + (hd * kOut + (j - ow * h)) * S;
            param = hd * head + b2 + o0 + (j - ow * h);
          }
          double sum = 0;
          if (v != nullptr) {
            for (int r = 0; r < rows; ++r) sum += static_cast<double>(u[r]) * v[r];
          } else {
            for (int r = 0; r < rows; ++r) sum += u[r];
          }
          G[param] += sum;
        }
      }
      // Through the ReLU (own column only), then the b1 and W1 gradients.
      if (mine) {
        for (int64_t k = 0; k < 2 * h; ++k) {
          if (!(HID[k * S + tid] > 0)) DH[k * S + tid] = 0;
        }
      }
      __syncthreads();
      for (int64_t k = tid; k < 2 * h; k += R) {
        double sum = 0;
        for (int r = 0; r < rows; ++r) sum += DH[k * S + r];
        G[(k / h) * head + b1 + k % h] += sum;
      }
      for (int64_t f0 = 0; f0 < dx; f0 += kIn) {
        const int fw = static_cast<int>(min(static_cast<int64_t>(kIn), dx - f0));
        __syncthreads();
        stage(x, dx, r0, rows, f0, fw, IN, S);
        __syncthreads();
        for (int64_t i = tid; i < 2 * h * fw; i += R) {  // f fastest: lanes read distinct banks
          const int64_t k = i / fw;
          const int f = static_cast<int>(i % fw);
          double sum = 0;
          for (int r = 0; r < rows; ++r) {
            sum += static_cast<double>(DH[k * S + r]) * IN[f * S + r];
          }
          G[(k / h) * head + w1 + (k % h) * dx + f0 + f] += sum;
        }
      }
    }
    DBL[tid] = my_loss;
    __syncthreads();
    if (tid == 0) {
      double total = 0;
      for (int r = 0; r < R; ++r) total += DBL[r];
      G[np] = total;
    }
    grid.sync();
    // Adam (torch.optim.Adam's single-tensor formulas, in scalar_t as on the CPU) on the
    // summed gradient. Column slices of 32 (the loss is column np): warp g of the block sums
    // blocks g, g + R/32, ... of its column, then lanes of warp 0 add the R/32 sums in order.
    const double t = static_cast<double>(a.step0 + it + 1);
    const scalar_t step_size = static_cast<scalar_t>(a.lr / (1 - pow(a.beta1, t)));
    const scalar_t bc2_sqrt = static_cast<scalar_t>(sqrt(1 - pow(a.beta2, t)));
    const scalar_t wd1 = static_cast<scalar_t>(1 - a.beta1), b2c = static_cast<scalar_t>(a.beta2);
    const scalar_t wd2 = static_cast<scalar_t>(1 - a.beta2), eps = static_cast<scalar_t>(a.eps);
    const int groups = R / 32;
    for (int64_t s0 = static_cast<int64_t>(blockIdx.x) * 32; s0 < stride;
         s0 += static_cast<int64_t>(gridDim.x) * 32) {  // uniform over the block
      const int64_t col = s0 + lane;
      double sum = 0;
      if (col < stride) {
        for (int64_t blk = tid / 32; blk < gridDim.x; blk += groups) sum += partial[blk * stride + col];
      }
      DBL[tid] = sum;
      __syncthreads();
      if (tid < 32 && col < stride) {
        double total = 0;
        for (int g = 0; g < groups; ++g) total += DBL[g * 32 + tid];
        if (col == np) {
          losses[it] = static_cast<scalar_t>(total);
        } else {
          const scalar_t gi = static_cast<scalar_t>(total);
          const scalar_t m = exp_avg[col] + wd1 * (gi - exp_avg[col]);
          const scalar_t v = exp_avg_sq[col] * b2c + wd2 * gi * gi;
          exp_avg[col] = m;
          exp_avg_sq[col] = v;
          params[col] = params[col] - step_size * m / (sqrt(v) / bc2_sqrt + eps);
        }
      }
      __syncthreads();  // DBL is reused by the next slice
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
    // Rows per block: 128, halved (down to 32) while the tiles would not cover every SM
    // (one thread per row: more, smaller blocks finish a step sooner) or the shared memory,
    // which grows with the hidden width only, does not fit.
    int64_t R = 128;
    while (R > 32 && ((args.n + R - 1) / R < sms ||
                      club_smem_bytes<scalar_t>(args.h, R) > static_cast<size_t>(optin))) {
      R /= 2;
    }
    const size_t smem = club_smem_bytes<scalar_t>(args.h, R);
    TORCH_CHECK(smem <= static_cast<size_t>(optin), "club_learn: the q-net's hidden layer (",
                args.h, " units) is too wide for the CUDA kernel (", smem,
                " bytes of shared memory needed, the device allows ", optin, ")");
    auto kernel = club_learn_kernel<scalar_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                                 static_cast<int>(R), smem));
    TORCH_CHECK(per_sm > 0, "club_learn: the CUDA kernel cannot be resident on this GPU");
    const int64_t tiles = (args.n + R - 1) / R;
    const int blocks = static_cast<int>(
        std::min<int64_t>(tiles, static_cast<int64_t>(per_sm) * sms));
    // Each block's gradient (double, as on the CPU), then its loss.
    at::Tensor partial = at::empty({blocks, args.np + 1}, x.options().dtype(at::kDouble));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* wp = row_weight.data_ptr<scalar_t>();
    scalar_t* pp = params.data_ptr<scalar_t>();
    scalar_t* mp = exp_avg.data_ptr<scalar_t>();
    scalar_t* vp = exp_avg_sq.data_ptr<scalar_t>();
    double* part = partial.data_ptr<double>();
    scalar_t* out = losses.data_ptr<scalar_t>();
    void* kargs[] = {&xp, &yp, &wp, &pp, &mp, &vp, &part, &out, &args};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), blocks,
                                               static_cast<int>(R), kargs, smem, stream));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("club_learn", &Bind<club_learn_with, club_learn_kernel_cuda>::op);
}

}  // namespace mmfast
