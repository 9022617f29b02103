// CPU kernel of club_learn: every step is one pass over the rows (forward, loss, backward of
// the tiny MLP, all in registers/L1 per row) into per-chunk gradient sums, the chunks added
// in a fixed order in double (reproducible whatever the thread count), then Adam exactly as
// torch.optim.Adam's single-tensor path writes it.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../bind.h"
#include "../club.h"

namespace mmfast {
namespace {

constexpr int64_t kChunk = 256;  // rows per gradient partial

// Adds one chunk of rows' gradient to g (layout of ClubShape) and returns its loss. Per-row
// arithmetic is in scalar_t with SIMD reductions (fixed order: deterministic); the chunk
// partials are added in acc_t by the caller.
template <typename scalar_t>
scalar_t club_rows(const ClubShape& s, const scalar_t* __restrict__ x,
                   const scalar_t* __restrict__ y, const scalar_t* __restrict__ w,
                   const scalar_t* __restrict__ p, int64_t r0, int64_t r1,
                   scalar_t* __restrict__ g) {
  const int64_t dx = s.dx, h = s.h, dy = s.dy;
  // Parameter and gradient views: head 0 is mu, head 1 is logvar.
  const scalar_t* W1[2] = {p, p + s.head()};
  const scalar_t* b1[2] = {W1[0] + s.w1(), W1[1] + s.w1()};
  const scalar_t* W2[2] = {b1[0] + h, b1[1] + h};
  const scalar_t* b2[2] = {W2[0] + s.w2(), W2[1] + s.w2()};
  scalar_t* gW1[2] = {g, g + s.head()};
  scalar_t* gb1[2] = {gW1[0] + s.w1(), gW1[1] + s.w1()};
  scalar_t* gW2[2] = {gb1[0] + h, gb1[1] + h};
  scalar_t* gb2[2] = {gW2[0] + s.w2(), gW2[1] + s.w2()};
  std::vector<scalar_t> hid(2 * h), dout(2 * dy);
  scalar_t loss = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* __restrict__ xr = x + r * dx;
    const scalar_t* __restrict__ yr = y + r * dy;
    const scalar_t wr = w[r];
    for (int hd = 0; hd < 2; ++hd) {
      for (int64_t k = 0; k < h; ++k) {
        scalar_t z = b1[hd][k];
        const scalar_t* __restrict__ wk = W1[hd] + k * dx;
#pragma omp simd reduction(+ : z)
        for (int64_t f = 0; f < dx; ++f) z += wk[f] * xr[f];
        hid[hd * h + k] = z > 0 ? z : scalar_t(0);
      }
    }
    for (int64_t o = 0; o < dy; ++o) {
      scalar_t mu = b2[0][o], z = b2[1][o];
      for (int64_t k = 0; k < h; ++k) {
        mu += W2[0][o * h + k] * hid[k];
        z += W2[1][o * h + k] * hid[h + k];
      }
      const scalar_t lv = std::tanh(z), inv_var = std::exp(-lv), diff = mu - yr[o];
      const scalar_t q = diff * diff * inv_var;
      loss += wr * scalar_t(0.5) * (q + lv);                            // -log q(y|x) + const
      dout[o] = wr * diff * inv_var;                                      // d/d mu
      dout[dy + o] = wr * scalar_t(0.5) * (1 - q) * (1 - lv * lv);        // d/d pre-tanh
    }
    for (int hd = 0; hd < 2; ++hd) {
      const scalar_t* hh = hid.data() + hd * h;
      const scalar_t* dd = dout.data() + hd * dy;
      for (int64_t o = 0; o < dy; ++o) {
        gb2[hd][o] += dd[o];
        scalar_t* __restrict__ go = gW2[hd] + o * h;
        for (int64_t k = 0; k < h; ++k) go[k] += dd[o] * hh[k];
      }
      for (int64_t k = 0; k < h; ++k) {
        if (!(hh[k] > 0)) continue;  // ReLU passes gradient only where it was positive
        scalar_t dh = 0;
        const scalar_t* __restrict__ w2 = W2[hd];
        for (int64_t o = 0; o < dy; ++o) dh += w2[o * h + k] * dd[o];
        gb1[hd][k] += dh;
        scalar_t* __restrict__ gk = gW1[hd] + k * dx;
#pragma omp simd
        for (int64_t f = 0; f < dx; ++f) gk[f] += dh * xr[f];
      }
    }
  }
  return loss;
}

template <typename scalar_t>
void club_learn_typed(const ClubShape& s, const at::Tensor& x, const at::Tensor& y,
                      const at::Tensor& row_weight, at::Tensor& params, at::Tensor& exp_avg,
                      at::Tensor& exp_avg_sq, const AdamConfig& cfg, at::Tensor& losses) {
  using acc_t = at::acc_type<scalar_t, false>;
  const int64_t n = x.size(0), np = s.size(), chunks = (n + kChunk - 1) / kChunk;
  std::vector<scalar_t> partial(chunks * np), chunk_loss(chunks);
  std::vector<acc_t> grad(np);
  scalar_t* p = params.data_ptr<scalar_t>();
  scalar_t* m = exp_avg.data_ptr<scalar_t>();
  scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* wp = row_weight.data_ptr<scalar_t>();
  scalar_t* out = losses.data_ptr<scalar_t>();
  for (int64_t it = 0; it < cfg.steps; ++it) {
    std::fill(partial.begin(), partial.end(), scalar_t(0));
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        chunk_loss[c] = club_rows<scalar_t>(s, xp, yp, wp, p, c * kChunk,
                                                   std::min(n, (c + 1) * kChunk),
                                                   partial.data() + c * np);
      }
    });
    acc_t loss = 0;
    std::fill(grad.begin(), grad.end(), acc_t(0));
    for (int64_t c = 0; c < chunks; ++c) {
      loss += chunk_loss[c];
      for (int64_t i = 0; i < np; ++i) grad[i] += partial[c * np + i];
    }
    out[it] = static_cast<scalar_t>(loss);
    // torch.optim.Adam (single-tensor, no weight decay): lerp, addcmul, addcdiv.
    const double t = static_cast<double>(cfg.step + it + 1);
    const scalar_t step_size = static_cast<scalar_t>(cfg.lr / (1 - std::pow(cfg.beta1, t)));
    const scalar_t bc2_sqrt = static_cast<scalar_t>(std::sqrt(1 - std::pow(cfg.beta2, t)));
    const scalar_t w1 = static_cast<scalar_t>(1 - cfg.beta1);
    const scalar_t b2 = static_cast<scalar_t>(cfg.beta2), w2 = static_cast<scalar_t>(1 - cfg.beta2);
    const scalar_t eps = static_cast<scalar_t>(cfg.eps);
    for (int64_t i = 0; i < np; ++i) {
      const scalar_t gi = static_cast<scalar_t>(grad[i]);
      m[i] = m[i] + w1 * (gi - m[i]);
      v[i] = v[i] * b2 + w2 * gi * gi;
      p[i] = p[i] - step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
    }
  }
}

void club_learn_kernel_cpu(const ClubShape& s, const at::Tensor& x, const at::Tensor& y,
                           const at::Tensor& row_weight, at::Tensor& params, at::Tensor& exp_avg,
                           at::Tensor& exp_avg_sq, const AdamConfig& cfg, at::Tensor& losses) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmfast_club_learn_cpu", [&] {
    club_learn_typed<scalar_t>(s, x, y, row_weight, params, exp_avg, exp_avg_sq, cfg, losses);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("club_learn", &Bind<club_learn_with, club_learn_kernel_cpu>::op);
}

}  // namespace mmfast
