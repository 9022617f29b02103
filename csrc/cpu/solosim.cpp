// CPU kernels of SoloSim. The work is a grid of tiles, kRows rows of a by kCols rows (columns)
// of b. Each tile's logits come from a register-tiled GEMM over the features with b's rows as
// the SIMD dimension (b packed feature-major once per call).
// - Forward: the logits never leave the registers. Each row keeps a shift m (its positive
//   logit at first) and a sum of exp(logit - m); a chunk whose logits exceed m by more than
//   kSlack is redone with m raised to its maximum (rare: the shift is not a running max, so
//   the common case needs no rescaling, only one max per vector to check the slack).
// - Backward: each tile's probabilities P = exp(logit - lse) are written to a small buffer
//   (L1/L2), then both gradient products read them as broadcasts, the features being the SIMD
//   dimension: grad_a[i] += sum_j P_ij b_j and grad_b[j] += sum_i P_ij a_i, each a register
//   tile of accumulators (no horizontal sums). grad_b sums over all row blocks: the blocks are
//   split into a fixed number of parts (not threads), each with its own partial sum, added in
//   part order, so results are the same whatever the thread count.
// The hot functions exist twice: with 64-byte vectors for x86-64-v4 (AVX-512), and with
// 32-byte vectors cloned for x86-64-v3 and baseline; the choice is made once from the CPU.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "../bind.h"
#include "../solosim.h"
#include "simd.h"

namespace mmfast {
namespace {

constexpr int64_t kRows = 32;   // rows of a per block
constexpr int64_t kCols = 128;  // rows of b per forward chunk (a multiple of kVT lanes' worth)
constexpr int64_t kBCols = 64;  // rows of b per backward chunk (divides kCols)
constexpr int64_t kParts = 8;   // fixed split of the backward's row blocks (grad_b partials)
constexpr int kRT = 4;          // logit register tile: kRT rows x kVT vectors of columns
constexpr int kVT = 4;
constexpr int kGR = 8;          // gradient register tile: kGR rows x kGV vectors of features
constexpr int kGV = 2;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Vectors of W bytes. Only always-inlined helpers take them, so the ABI note does not apply.
template <typename T, int W>
struct VecOf {
  typedef T V __attribute__((vector_size(W)));
};
template <typename T, int W>
using VecT = typename VecOf<T, W>::V;

template <typename T, int W>
MMFAST_INLINE VecT<T, W> vload(const T* p) {
  VecT<T, W> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T, int W>
MMFAST_INLINE void vstore(T* p, VecT<T, W> v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T, int W>
MMFAST_INLINE VecT<T, W> vmax(VecT<T, W> a, VecT<T, W> b) {
  return a > b ? a : b;
}
// Horizontal max and sum by halving (lane order fixed: results do not depend on anything else).
template <typename T, int W>
MMFAST_INLINE T hmax(VecT<T, W> v) {
  if constexpr (W == 2 * static_cast<int>(sizeof(T))) {
    return v[0] > v[1] ? v[0] : v[1];
  } else {
    VecT<T, W / 2> lo, hi;
    std::memcpy(&lo, &v, W / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + W / 2, W / 2);
    return hmax<T, W / 2>(vmax<T, W / 2>(lo, hi));
  }
}
template <typename T, int W>
MMFAST_INLINE T hsum(VecT<T, W> v) {
  if constexpr (W == 2 * static_cast<int>(sizeof(T))) {
    return v[0] + v[1];
  } else {
    VecT<T, W / 2> lo, hi;
    std::memcpy(&lo, &v, W / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + W / 2, W / 2);
    return hsum<T, W / 2>(lo + hi);
  }
}

// exp(x) for x <= kSlack (every caller's range: logits minus a shift at most kSlack below
// them, or minus their row's lse). x = k ln2 + r, |r| <= ln2/2, exp(r) by a polynomial, 2^k
// built in the exponent bits. Inputs below kLow (including -inf: padding) give exp(kLow), a
// normal number that no sum here can see (every sum has a term >= 1, and padding rows and
// columns multiply zero rows of a or b), so no denormal ever reaches the FPU.
template <typename T>
struct ExpPoly;
template <>
struct ExpPoly<float> {
  // Near-minimax degree 6 on [-ln2/2, ln2/2] with p(0) = 1: relative error 2e-8 (with the
  // coefficients rounded to float), so the result is within about 1 ulp.
  static constexpr int kDegree = 6;
  static constexpr float kCoef[kDegree + 1] = {1.0f,          1.0f,          0.49999994f,
                                               0.16666432f,   0.041667998f,  0.008374153f,
                                               0.0013843874f};
  static constexpr float kLow = -86.0f, kMagic = 0x1.8p23f;
  static constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  typedef int32_t Word;
  static constexpr int kMantissa = 23, kBias = 127;
};
template <>
struct ExpPoly<double> {
  // Taylor degree 13: the remainder r^14/14! is below 0.1 ulp on |r| <= ln2/2.
  static constexpr int kDegree = 13;
  static constexpr double kCoef[kDegree + 1] = {
      1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
      1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};
  static constexpr double kLow = -700.0, kMagic = 0x1.8p52;
  static constexpr double kLn2Hi = 0x1.62e42fee00000p-1, kLn2Lo = 0x1.a39ef35793c76p-33;
  typedef int64_t Word;
  static constexpr int kMantissa = 52, kBias = 1023;
};

template <typename T, int W>
MMFAST_INLINE VecT<T, W> vexp(VecT<T, W> x) {
  using E = ExpPoly<T>;
  using V = VecT<T, W>;
  typedef typename E::Word Bits __attribute__((vector_size(W)));
  const V low = V{} + E::kLow;
  x = low > x ? low : x;
  const V kd = x * T(1.4426950408889634) + E::kMagic;  // round(x / ln2), in the low bits
  const V k = kd - E::kMagic;
  const V r = (x - k * E::kLn2Hi) - k * E::kLn2Lo;
  V p = V{} + E::kCoef[E::kDegree];
#pragma GCC unroll 16
  for (int i = E::kDegree - 1; i >= 0; --i) p = p * r + E::kCoef[i];
  const Bits two_k = (__builtin_bit_cast(Bits, kd) << E::kMantissa) +
                     (static_cast<typename E::Word>(E::kBias) << E::kMantissa);
  return p * __builtin_bit_cast(V, two_k);
}

// Sets flush-to-zero and denormals-are-zero for the calling thread while alive, as BLAS
// libraries do: a probability below the float range times a feature would otherwise be a
// denormal product, and each such FMA costs a microcode assist (the padding columns alone
// made the backward 3x slower). Values that small cannot change any sum here.
struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Aligned, zeroed scratch.
template <typename T>
struct Buf {
  std::unique_ptr<T, void (*)(void*)> p;
  explicit Buf(int64_t n)
      : p(static_cast<T*>(std::aligned_alloc(64, round_up(std::max<int64_t>(n, 1) * sizeof(T), 64))),
          &std::free) {
    TORCH_CHECK(p, "solosim: out of memory");
    std::memset(p.get(), 0, n * sizeof(T));
  }
  T* get() const { return p.get(); }
};

// a and b in the layouts the tiles read, features zero-padded to dv (a multiple of kGV
// vectors): as = a * scale and ar = a, [rows_pad, dv]; br = b, [cols_pad, dv]; bt = b^T by
// chunks of kCols columns, [cols_pad / kCols, dv, kCols] (a chunk is contiguous: no cache-set
// aliasing whatever n); bias [cols_pad]: 0, or -inf on padding columns so that they drop out of
// every sum; shift [rows_pad]: each row's positive logit (the forward's first shift).
template <typename T>
struct Packed {
  int64_t n, d, dv, rows_pad, cols_pad;
  Buf<T> as, ar, br, bt, bias, shift;

  Packed(const at::Tensor& at_a, const at::Tensor& at_b, double scale, int64_t lanes)
      : n(at_a.size(0)), d(at_a.size(1)), dv(round_up(d, kGV * lanes)),
        rows_pad(round_up(n, kRows)), cols_pad(round_up(n, kCols)), as(rows_pad * dv),
        ar(rows_pad * dv), br(cols_pad * dv), bt(dv * cols_pad), bias(cols_pad),
        shift(rows_pad) {
    const T* pa = at_a.data_ptr<T>();
    const T* pb = at_b.data_ptr<T>();
    T* a_s = as.get();
    T* a_r = ar.get();
    T* b_r = br.get();
    T* b_t = bt.get();
    for (int64_t i = 0; i < n; ++i) {
      T pos = 0;
      for (int64_t f = 0; f < d; ++f) {
        const T x = pa[i * d + f], y = pb[i * d + f];
        a_r[i * dv + f] = x;
        a_s[i * dv + f] = static_cast<T>(x * scale);
        b_r[i * dv + f] = y;
        b_t[(i / kCols * dv + f) * kCols + i % kCols] = y;
        pos += a_s[i * dv + f] * y;
      }
      shift.get()[i] = pos;
    }
    std::fill(bias.get() + n, bias.get() + cols_pad, -std::numeric_limits<T>::infinity());
  }
  int64_t blocks() const { return rows_pad / kRows; }
};

// acc[rr][v] = logits of rows r + rr against columns c + v * L + [0, L).
template <typename T, int W>
MMFAST_INLINE void logit_tile(const Packed<T>& pk, int64_t r, int64_t c,
                              VecT<T, W> (&acc)[kRT][kVT]) {
  using V = VecT<T, W>;
  constexpr int L = W / sizeof(T);
  const int64_t dv = pk.dv, cp = kCols;
  const T* a = pk.as.get() + r * dv;
  const T* bt = pk.bt.get() + c / kCols * dv * kCols + c % kCols;
#pragma GCC unroll 4
  for (int v = 0; v < kVT; ++v) {
    const V cb = vload<T, W>(pk.bias.get() + c + v * L);
#pragma GCC unroll 4
    for (int rr = 0; rr < kRT; ++rr) acc[rr][v] = cb;
  }
  for (int64_t f = 0; f < dv; ++f) {
    V x[kVT];
#pragma GCC unroll 4
    for (int v = 0; v < kVT; ++v) x[v] = vload<T, W>(bt + f * cp + v * L);
#pragma GCC unroll 4
    for (int rr = 0; rr < kRT; ++rr) {
      const T w = a[rr * dv + f];
#pragma GCC unroll 4
      for (int v = 0; v < kVT; ++v) acc[rr][v] += w * x[v];
    }
  }
}

// lse of rows [r0, r0 + kRows).
template <typename T, int W>
MMFAST_INLINE void forward_block_impl(const Packed<T>& pk, int64_t r0, T* lse) {
  using V = VecT<T, W>;
  using acc_t = at::acc_type<T, false>;
  constexpr int L = W / sizeof(T);
  constexpr T kSlack = 16;  // exp(16) * n stays far from overflow
  T m[kRows];
  acc_t total[kRows];
  for (int64_t i = 0; i < kRows; ++i) {
    m[i] = pk.shift.get()[r0 + i];
    total[i] = 0;
  }
  for (int64_t c0 = 0; c0 < pk.cols_pad; c0 += kCols) {
    for (int64_t i0 = 0; i0 < kRows; i0 += kRT) {
      V sum[kRT], top[kRT];
      for (;;) {
        V shift[kRT];
#pragma GCC unroll 4
        for (int rr = 0; rr < kRT; ++rr) {
          shift[rr] = V{} + m[i0 + rr];
          sum[rr] = V{};
          top[rr] = V{} - std::numeric_limits<T>::infinity();
        }
        for (int64_t c = c0; c < c0 + kCols; c += kVT * L) {
          V acc[kRT][kVT];
          logit_tile<T, W>(pk, r0 + i0, c, acc);
#pragma GCC unroll 4
          for (int rr = 0; rr < kRT; ++rr) {
#pragma GCC unroll 4
            for (int v = 0; v < kVT; ++v) {
              const V x = acc[rr][v] - shift[rr];
              top[rr] = vmax<T, W>(top[rr], x);
              sum[rr] += vexp<T, W>(x);
            }
          }
        }
        // Some logit above its row's shift + kSlack: raise the shift, redo the chunk.
        bool redo = false;
        for (int rr = 0; rr < kRT; ++rr) {
          const T t = hmax<T, W>(top[rr]);
          if (t > kSlack) {
            const T raised = m[i0 + rr] + t;
            total[i0 + rr] *= std::exp(static_cast<acc_t>(m[i0 + rr]) - raised);
            m[i0 + rr] = raised;
            redo = true;
          }
        }
        if (!redo) break;
      }
      for (int rr = 0; rr < kRT; ++rr) total[i0 + rr] += hsum<T, W>(sum[rr]);
    }
  }
  for (int64_t i = 0; i < kRows; ++i) lse[i] = static_cast<T>(m[i] + std::log(total[i]));
}

// The row blocks [blk_begin, blk_end) of one part, chunk by chunk of kBCols columns, so that
// the chunk's b (both layouts) and its grad_b accumulators stay in L1 while the part's rows pass.
// ga [rows_pad, dv]: grad_a (this part's rows added to); gb [cols_pad, dv]: the part's grad_b
// partial (written). lse [rows_pad]: +inf on padding rows. p: scratch [kRows, kBCols].
template <typename T, int W>
MMFAST_INLINE void backward_part_impl(const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,
                                      const T* lse, T* p, T* ga, T* gb) {
  using V = VecT<T, W>;
  constexpr int L = W / sizeof(T);
  const int64_t dv = pk.dv;
  for (int64_t c0 = 0; c0 < pk.cols_pad; c0 += kBCols) {
    T* gbc = gb + c0 * dv;
    std::memset(gbc, 0, kBCols * dv * sizeof(T));
    const T* b = pk.br.get() + c0 * dv;
    for (int64_t r0 = blk_begin * kRows; r0 < blk_end * kRows; r0 += kRows) {
      // P = exp(logit - lse) of the tile.
      for (int64_t i0 = 0; i0 < kRows; i0 += kRT) {
        V shift[kRT];
#pragma GCC unroll 4
        for (int rr = 0; rr < kRT; ++rr) shift[rr] = V{} + lse[r0 + i0 + rr];
        for (int64_t c = 0; c < kBCols; c += kVT * L) {
          V acc[kRT][kVT];
          logit_tile<T, W>(pk, r0 + i0, c0 + c, acc);
#pragma GCC unroll 4
          for (int rr = 0; rr < kRT; ++rr) {
#pragma GCC unroll 4
            for (int v = 0; v < kVT; ++v)
              vstore<T, W>(p + (i0 + rr) * kBCols + c + v * L, vexp<T, W>(acc[rr][v] - shift[rr]));
          }
        }
      }
      // ga[i] += sum_j P_ij b_j.
      T* gar = ga + r0 * dv;
      for (int64_t i0 = 0; i0 < kRows; i0 += kGR) {
        for (int64_t f = 0; f < dv; f += kGV * L) {
          V acc[kGR][kGV];
#pragma GCC unroll 8
          for (int rr = 0; rr < kGR; ++rr) {
#pragma GCC unroll 2
            for (int g = 0; g < kGV; ++g) acc[rr][g] = vload<T, W>(gar + (i0 + rr) * dv + f + g * L);
          }
          for (int64_t j = 0; j < kBCols; ++j) {
            V x[kGV];
#pragma GCC unroll 2
            for (int g = 0; g < kGV; ++g) x[g] = vload<T, W>(b + j * dv + f + g * L);
#pragma GCC unroll 8
            for (int rr = 0; rr < kGR; ++rr) {
              const T w = p[(i0 + rr) * kBCols + j];
#pragma GCC unroll 2
              for (int g = 0; g < kGV; ++g) acc[rr][g] += w * x[g];
            }
          }
#pragma GCC unroll 8
          for (int rr = 0; rr < kGR; ++rr) {
#pragma GCC unroll 2
            for (int g = 0; g < kGV; ++g) vstore<T, W>(gar + (i0 + rr) * dv + f + g * L, acc[rr][g]);
          }
        }
      }
      // gb[j] += sum_i P_ij a_i.
      const T* a = pk.ar.get() + r0 * dv;
      for (int64_t j0 = 0; j0 < kBCols; j0 += kGR) {
        for (int64_t f = 0; f < dv; f += kGV * L) {
          V acc[kGR][kGV];
#pragma GCC unroll 8
          for (int jj = 0; jj < kGR; ++jj) {
#pragma GCC unroll 2
            for (int g = 0; g < kGV; ++g) acc[jj][g] = vload<T, W>(gbc + (j0 + jj) * dv + f + g * L);
          }
          for (int64_t i = 0; i < kRows; ++i) {
            V x[kGV];
#pragma GCC unroll 2
            for (int g = 0; g < kGV; ++g) x[g] = vload<T, W>(a + i * dv + f + g * L);
#pragma GCC unroll 8
            for (int jj = 0; jj < kGR; ++jj) {
              const T w = p[i * kBCols + j0 + jj];
#pragma GCC unroll 2
              for (int g = 0; g < kGV; ++g) acc[jj][g] += w * x[g];
            }
          }
#pragma GCC unroll 8
          for (int jj = 0; jj < kGR; ++jj) {
#pragma GCC unroll 2
            for (int g = 0; g < kGV; ++g) vstore<T, W>(gbc + (j0 + jj) * dv + f + g * L, acc[jj][g]);
          }
        }
      }
    }
  }
}

// The compiled variants: 64-byte vectors on x86-64-v4, 32-byte ones cloned per level otherwise.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MMFAST_HAVE_V4 1
template <typename T>
__attribute__((target("arch=x86-64-v4"))) void forward_block_v4(const Packed<T>& pk, int64_t r0,
                                                                T* lse) {
  forward_block_impl<T, 64>(pk, r0, lse);
}
template <typename T>
__attribute__((target("arch=x86-64-v4"))) void backward_part_v4(const Packed<T>& pk,
                                                                int64_t blk_begin,
                                                                int64_t blk_end, const T* lse,
                                                                T* p, T* ga, T* gb) {
  backward_part_impl<T, 64>(pk, blk_begin, blk_end, lse, p, ga, gb);
}
bool use_v4() {
  static const bool yes = __builtin_cpu_supports("x86-64-v4");
  return yes;
}
#else
#define MMFAST_HAVE_V4 0
bool use_v4() { return false; }
#endif

template <typename T>
MMFAST_SIMD_CLONES void forward_block_v3(const Packed<T>& pk, int64_t r0, T* lse) {
  forward_block_impl<T, 32>(pk, r0, lse);
}
template <typename T>
MMFAST_SIMD_CLONES void backward_part_v3(const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,
                                         const T* lse, T* p, T* ga, T* gb) {
  backward_part_impl<T, 32>(pk, blk_begin, blk_end, lse, p, ga, gb);
}

template <typename T>
void forward_block(bool v4, const Packed<T>& pk, int64_t r0, T* lse) {
#if MMFAST_HAVE_V4
  if (v4) return forward_block_v4<T>(pk, r0, lse);
#endif
  forward_block_v3<T>(pk, r0, lse);
}
template <typename T>
void backward_part(bool v4, const Packed<T>& pk, int64_t blk_begin, int64_t blk_end, const T* lse,
                   T* p, T* ga, T* gb) {
#if MMFAST_HAVE_V4
  if (v4) return backward_part_v4<T>(pk, blk_begin, blk_end, lse, p, ga, gb);
#endif
  backward_part_v3<T>(pk, blk_begin, blk_end, lse, p, ga, gb);
}

int64_t lanes_for(bool v4, int64_t size) { return (v4 ? 64 : 32) / size; }

void solosim_forward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                         at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_cpu", [&] {
    const bool v4 = use_v4();
    const Packed<scalar_t> pk(a, b, scale, lanes_for(v4, sizeof(scalar_t)));
    Buf<scalar_t> out(pk.rows_pad);
    at::parallel_for(0, pk.blocks(), 1, [&](int64_t blk_begin, int64_t blk_end) {
      const FlushDenormals ftz;
      for (int64_t blk = blk_begin; blk < blk_end; ++blk)
        forward_block<scalar_t>(v4, pk, blk * kRows, out.get() + blk * kRows);
    });
    std::copy_n(out.get(), pk.n, lse.data_ptr<scalar_t>());
  });
}

void solosim_backward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                          const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    const bool v4 = use_v4();
    const Packed<scalar_t> pk(a, b, scale, lanes_for(v4, sizeof(scalar_t)));
    const int64_t n = pk.n, d = pk.d, dv = pk.dv, blocks = pk.blocks();
    Buf<scalar_t> lse_pad(pk.rows_pad);
    std::copy_n(lse.data_ptr<scalar_t>(), n, lse_pad.get());
    std::fill(lse_pad.get() + n, lse_pad.get() + pk.rows_pad,
              std::numeric_limits<scalar_t>::infinity());
    Buf<scalar_t> ga(pk.rows_pad * dv);
    // grad_b sums over every row block: each part keeps its own partial, added in part order.
    const int64_t parts = std::min<int64_t>(blocks, kParts);
    const int64_t part_size = pk.cols_pad * dv;
    std::unique_ptr<scalar_t, void (*)(void*)> gb(
        static_cast<scalar_t*>(std::aligned_alloc(64, parts * part_size * sizeof(scalar_t))),
        &std::free);
    TORCH_CHECK(gb, "solosim_backward: out of memory");
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      const FlushDenormals ftz;
      Buf<scalar_t> p(kRows * kBCols);
      for (int64_t part = part_begin; part < part_end; ++part) {
        backward_part<scalar_t>(v4, pk, part * blocks / parts, (part + 1) * blocks / parts,
                                lse_pad.get(), p.get(), ga.get(), gb.get() + part * part_size);
      }
    });
    scalar_t* out_a = pa.data_ptr<scalar_t>();
    scalar_t* out_b = pb.data_ptr<scalar_t>();
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t f = 0; f < d; ++f) {
          out_a[i * d + f] = ga.get()[i * dv + f];
          acc_t s = 0;
          for (int64_t part = 0; part < parts; ++part) s += gb.get()[part * part_size + i * dv + f];
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
