// CPU kernels of SoloSim: row blocks of a against column tiles of b, each logit tile made by
// one BLAS call into a thread-local buffer that stays in cache, reduced by an online
// log-sum-exp (running max and rescaled sum). The backward recomputes each tile once and
// uses it for both gradients. Work is split into a fixed number of parts (not threads), each
// summed in a fixed order, so results are reproducible run to run.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../bind.h"
#include "../solosim.h"

namespace mmfast {
namespace {

constexpr int64_t kRows = 64;    // rows of a per block
constexpr int64_t kCols = 1024;  // rows of b per tile: a 64 x 1024 float tile is 256 KiB

int64_t num_blocks(int64_t n) { return (n + kRows - 1) / kRows; }

void solosim_forward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                         at::Tensor& lse) {
  const int64_t n = a.size(0);
  const at::Tensor as = a * scale;  // fold 1/temperature into a once: O(n d)
  at::parallel_for(0, num_blocks(n), 1, [&](int64_t blk_begin, int64_t blk_end) {
    at::NoGradGuard no_grad;
    at::Tensor tile = at::empty({kRows, std::min(kCols, n)}, a.options());
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t r0 = blk * kRows, rows = std::min(kRows, n - r0);
      const at::Tensor ar = as.narrow(0, r0, rows);
      at::Tensor run_max = at::full({rows}, -std::numeric_limits<double>::infinity(), a.options());
      at::Tensor run_sum = at::zeros({rows}, a.options());
      for (int64_t c0 = 0; c0 < n; c0 += kCols) {
        const int64_t cols = std::min(kCols, n - c0);
        at::Tensor s = tile.narrow(0, 0, rows).narrow(1, 0, cols);
        at::mm_out(s, ar, b.narrow(0, c0, cols).t());
        const at::Tensor new_max = at::maximum(run_max, std::get<0>(s.max(1)));
        run_sum.mul_((run_max - new_max).exp_());
        run_sum.add_(s.sub_(new_max.unsqueeze(1)).exp_().sum(1));
        run_max = new_max;
      }
      lse.narrow(0, r0, rows).copy_(run_max + run_sum.log());
    }
  });
}

void solosim_backward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                          const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb) {
  const int64_t n = a.size(0), blocks = num_blocks(n);
  const at::Tensor as = a * scale;
  // pb sums over every row block: each part keeps its own partial sum, added in part order.
  const int64_t parts = std::min<int64_t>(blocks, std::max<int64_t>(8, at::get_num_threads()));
  at::Tensor pb_parts = at::zeros({parts, n, a.size(1)}, a.options());
  at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    at::NoGradGuard no_grad;
    at::Tensor tile = at::empty({kRows, std::min(kCols, n)}, a.options());
    for (int64_t part = part_begin; part < part_end; ++part) {
      at::Tensor pb_part = pb_parts[part];
      for (int64_t blk = part * blocks / parts; blk < (part + 1) * blocks / parts; ++blk) {
        const int64_t r0 = blk * kRows, rows = std::min(kRows, n - r0);
        const at::Tensor ar = as.narrow(0, r0, rows);
        const at::Tensor lse_r = lse.narrow(0, r0, rows).unsqueeze(1);
        at::Tensor pa_r = pa.narrow(0, r0, rows);
        pa_r.zero_();
        for (int64_t c0 = 0; c0 < n; c0 += kCols) {
          const int64_t cols = std::min(kCols, n - c0);
          const at::Tensor bc = b.narrow(0, c0, cols);
          at::Tensor p = tile.narrow(0, 0, rows).narrow(1, 0, cols);
          at::mm_out(p, ar, bc.t());
          p.sub_(lse_r).exp_();  // P: the softmax probabilities of this tile
          pa_r.addmm_(p, bc);
          at::Tensor pb_c = pb_part.narrow(0, c0, cols);
          pb_c.addmm_(p.t(), a.narrow(0, r0, rows));
        }
      }
    }
  });
  at::sum_out(pb, pb_parts, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("solosim", &Bind<solosim_with, solosim_forward_cpu>::op);
  m.impl("solosim_backward", &Bind<solosim_backward_with, solosim_backward_cpu>::op);
}

}  // namespace mmfast
