// CPU kernel of club_learn. The rows are packed once into blocks of kRows, feature-major
// (x^T per block, zero-padded), so that every step is a few small GEMMs per block with the rows
// as the SIMD dimension: forward of both heads, loss, backward, all on activations that stay
// in L2. Each block writes its gradient partial in double; the partials are added in block
// order (reproducible whatever the thread count), then Adam runs exactly as
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
#include "simd.h"

namespace mmfast {
namespace {

using simd::Vec;
using simd::kLanes;

constexpr int64_t kRows = 256;  // rows per block: its float activations (~160 KiB) fit in L2

// Feature counts padded to the register tiles' height.
int64_t padded(int64_t d) { return (d + simd::kTile - 1) / simd::kTile * simd::kTile; }

// The q-net in padded, feature-major form. Parameters and gradients share this layout:
//   W1 [2 hp, dxp] (the mu head's rows, then logvar's), b1 [2 hp], W2 [2][dyp, hp], b2 [2][dyp]
// Padding rows/columns of the weights are zero, so padded features stay zero in the forward
// and never feed a real one in the backward.
struct Plan {
  int64_t hp, dxp, dyp;
  int64_t w1() const { return 0; }
  int64_t b1() const { return 2 * hp * dxp; }
  int64_t w2() const { return b1() + 2 * hp; }
  int64_t b2() const { return w2() + 2 * dyp * hp; }
  int64_t size() const { return b2() + 2 * dyp; }
  explicit Plan(const ClubShape& s) : hp(padded(s.h)), dxp(padded(s.dx)), dyp(padded(s.dy)) {}
};

// Calls fn(flat index (ClubShape layout), padded index (Plan layout)) for every parameter: the
// one map between the layouts, used to pack parameters and to unpack gradients.
template <typename Fn>
void for_each_param(const ClubShape& s, const Plan& pl, Fn fn) {
  for (int64_t hd = 0; hd < 2; ++hd) {
    const int64_t base = hd * s.head(), b1 = base + s.w1(), w2 = b1 + s.h, b2 = w2 + s.w2();
    for (int64_t k = 0; k < s.h; ++k) {
      for (int64_t f = 0; f < s.dx; ++f)
        fn(base + k * s.dx + f, pl.w1() + (hd * pl.hp + k) * pl.dxp + f);
      fn(b1 + k, pl.b1() + hd * pl.hp + k);
    }
    for (int64_t o = 0; o < s.dy; ++o) {
      for (int64_t k = 0; k < s.h; ++k) fn(w2 + o * s.h + k, pl.w2() + (hd * pl.dyp + o) * pl.hp + k);
      fn(b2 + o, pl.b2() + hd * pl.dyp + o);
    }
  }
}

// g[j] += sum_r d[j, r]: a bias gradient.
template <typename T, typename acc_t>
MMFAST_INLINE void row_sums(int64_t n, const T* d, acc_t* g) {
  for (int64_t j = 0; j < n; ++j) {
    Vec<T> acc = {};
    for (int64_t r = 0; r < kRows; r += kLanes<T>) acc += simd::load(d + j * kRows + r);
    g[j] += simd::hsum<T>(acc);
  }
}

// One block's loss and gradient, added to g (Plan layout, then the loss at g[pl.size()]).
// xt [dxp, kRows], yt [dyp, kRows], w [kRows]: the block, zero (weight 0) past the last row.
// p: the parameters (Plan layout). work: (4 hp + 2 dyp) x kRows.
template <typename T, typename acc_t>
MMFAST_SIMD_CLONES void club_block(const Plan& pl, const T* p, const T* xt, const T* yt,
                                   const T* w, T* work, acc_t* g) {
  constexpr int64_t L = kLanes<T>, R = kRows;
  const int64_t hp = pl.hp, dyp = pl.dyp, dxp = pl.dxp;
  T* hid = work;               // [2 hp]: ReLU outputs of both heads
  T* mu = hid + 2 * hp * R;    // [dyp]: mu, then d loss / d mu
  T* z = mu + dyp * R;         // [dyp]: logvar before tanh, then d loss / d z
  T* dhid = z + dyp * R;       // [2 hp]
  simd::fill_rows<T>(2 * hp, R, p + pl.b1(), hid);
  simd::gemm_bcast<T>(2 * hp, dxp, R, p + pl.w1(), dxp, 1, xt, R, hid, R);
  for (int64_t i = 0; i < 2 * hp * R; i += L) {
    const Vec<T> v = simd::load(hid + i);
    simd::store(hid + i, v > 0 ? v : Vec<T>{});
  }
  simd::fill_rows<T>(2 * dyp, R, p + pl.b2(), mu);  // mu and z are adjacent, as b2's halves
  for (int64_t hd = 0; hd < 2; ++hd)
    simd::gemm_bcast<T>(dyp, hp, R, p + pl.w2() + hd * dyp * hp, hp, 1, hid + hd * hp * R, R,
                        mu + hd * dyp * R, R);
  // Loss and its derivatives in mu and z: per element, with lv = tanh(z), iv = exp(-lv),
  // w/2 ((mu - y)^2 iv + lv), i.e. -log q(y | x) + const weighted by the row's 1/n.
  Vec<T> loss = {};
  for (int64_t o = 0; o < dyp; ++o) {
    for (int64_t r = 0; r < R; r += L) {
      const int64_t i = o * R + r;
      const Vec<T> zv = simd::load(z + i), wr = simd::load(w + r);
      const Vec<T> t = simd::exp<T>(zv < 0 ? zv + zv : -(zv + zv));  // exp(-2|z|) <= 1
      const Vec<T> th = (T(1) - t) / (T(1) + t);
      const Vec<T> lv = zv < 0 ? -th : th;
      const Vec<T> iv = simd::exp<T>(-lv);
      const Vec<T> diff = simd::load(mu + i) - simd::load(yt + i);
      const Vec<T> q = diff * diff * iv;
      loss += wr * T(0.5) * (q + lv);
      simd::store(mu + i, wr * diff * iv);
      simd::store(z + i, wr * T(0.5) * (T(1) - q) * (T(1) - lv * lv));
    }
  }
  simd::fill_rows<T>(2 * hp, R, nullptr, dhid);
  for (int64_t hd = 0; hd < 2; ++hd) {
    const T* dout = mu + hd * dyp * R;
    const T* w2 = p + pl.w2() + hd * dyp * hp;
    simd::gemm_dot<T, acc_t>(dyp, hp, R, dout, R, hid + hd * hp * R, R,
                             g + pl.w2() + hd * dyp * hp, hp);
    row_sums<T, acc_t>(dyp, dout, g + pl.b2() + hd * dyp);
    simd::gemm_bcast<T>(hp, dyp, R, w2, 1, hp, dout, R, dhid + hd * hp * R, R);  // W2^T dout
  }
  for (int64_t i = 0; i < 2 * hp * R; i += L) {  // ReLU passes gradient where it was positive
    const Vec<T> dv = simd::load(dhid + i);
    simd::store(dhid + i, simd::load(hid + i) > 0 ? dv : Vec<T>{});
  }
  row_sums<T, acc_t>(2 * hp, dhid, g + pl.b1());
  simd::gemm_dot<T, acc_t>(2 * hp, dxp, R, dhid, R, xt, R, g + pl.w1(), dxp);
  g[pl.size()] += simd::hsum<T>(loss);
}

// Copies rows [b * kRows, ...) of src [n, d] into block b of dst [blocks][dp, kRows],
// transposed; padding stays zero.
template <typename T>
void pack_rows(const T* src, int64_t n, int64_t d, int64_t dp, std::vector<T>& dst) {
  const int64_t blocks = (n + kRows - 1) / kRows;
  dst.assign(blocks * dp * kRows, T(0));
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* out = dst.data() + b * dp * kRows;
      for (int64_t r = 0; r < std::min(kRows, n - b * kRows); ++r)
        for (int64_t f = 0; f < d; ++f) out[f * kRows + r] = src[(b * kRows + r) * d + f];
    }
  });
}

template <typename scalar_t>
void club_learn_typed(const ClubShape& s, const at::Tensor& x, const at::Tensor& y,
                      const at::Tensor& row_weight, at::Tensor& params, at::Tensor& exp_avg,
                      at::Tensor& exp_avg_sq, const AdamConfig& cfg, at::Tensor& losses) {
  using acc_t = at::acc_type<scalar_t, false>;
  const Plan pl(s);
  const int64_t n = x.size(0), np = s.size(), blocks = (n + kRows - 1) / kRows;
  const int64_t stride = pl.size() + 1;  // a block's gradient partial, then its loss
  std::vector<scalar_t> xt, yt, wt(blocks * kRows, scalar_t(0));
  pack_rows(x.data_ptr<scalar_t>(), n, s.dx, pl.dxp, xt);
  pack_rows(y.data_ptr<scalar_t>(), n, s.dy, pl.dyp, yt);
  std::copy_n(row_weight.data_ptr<scalar_t>(), n, wt.begin());

  std::vector<scalar_t> packed(pl.size(), scalar_t(0));
  std::vector<acc_t> partial(blocks * stride), total(stride), grad(np);
  scalar_t* p = params.data_ptr<scalar_t>();
  scalar_t* m = exp_avg.data_ptr<scalar_t>();
  scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
  scalar_t* out = losses.data_ptr<scalar_t>();
  const int64_t work_size = (4 * pl.hp + 2 * pl.dyp) * kRows;
  for (int64_t it = 0; it < cfg.steps; ++it) {
    for_each_param(s, pl, [&](int64_t flat, int64_t pad) { packed[pad] = p[flat]; });
    std::fill(partial.begin(), partial.end(), acc_t(0));
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> work(work_size);
      for (int64_t b = b0; b < b1; ++b) {
        club_block<scalar_t, acc_t>(pl, packed.data(), xt.data() + b * pl.dxp * kRows,
                                    yt.data() + b * pl.dyp * kRows, wt.data() + b * kRows,
                                    work.data(), partial.data() + b * stride);
      }
    });
    std::fill(total.begin(), total.end(), acc_t(0));
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < stride; ++i) total[i] += partial[b * stride + i];
    for_each_param(s, pl, [&](int64_t flat, int64_t pad) { grad[flat] = total[pad]; });
    out[it] = static_cast<scalar_t>(total[pl.size()]);
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
