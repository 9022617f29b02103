// CPU kernels of SoloSim. The work is a grid of tiles: kRows rows of a by a chunk of rows
// ("columns") of b. Logits come from register-tiled GEMMs over the features with b's rows as
// the SIMD dimension (b packed feature-major by chunks once per call), in base 2 (log2 e is
// folded into a's scale), into a small buffer in L1, shifted by their row's shift on the way.
// - Forward: each row keeps a shift m (its positive logit at first, not a running max) and a
//   sum of 2^(logit - m). A chunk whose sum passes 2^kSlack (a logit well above m) is redone
//   with m raised to the chunk's maximum: rare, so the common case costs one exp2 and one add
//   per logit and no rescaling.
// - Backward: each tile's probabilities P = 2^(logit - lse) are written to the buffer, then
//   both gradient products read them as broadcasts, the features being the SIMD dimension:
//   grad_a[i] += sum_j P_ij b_j and grad_b[j] += sum_i P_ij a_i, each a register tile of
//   accumulators (no horizontal sums). The tiles form a fixed grid of parts (row ranges x
//   column ranges, whatever the thread count); each row range keeps a grad_b partial and each
//   column range a grad_a partial, added in order at the end: results are the same bits on
//   any number of threads. Threads take parts as they finish the previous one.
// The hot functions exist per vector width: 64 bytes for x86-64-v4 (AVX-512, exp2 by
// vscalefps), 32 for x86-64-v3 (AVX2 + FMA), 16 otherwise; chosen once from the CPU.
// Denormals are flushed inside the kernels (see FlushDenormals).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../bind.h"
#include "../solosim.h"
#include "simd.h"

namespace mmfast {
namespace {

constexpr int64_t kRows = 64;   // rows of a per block
constexpr int64_t kCols = 128;  // rows of b per forward chunk (a multiple of kVT lanes' worth)
constexpr int64_t kBCols = 64;  // rows of b per backward chunk (divides kCols)
constexpr int64_t kRowParts = 8;  // the backward's fixed grid of parts: row ranges (one grad_b
constexpr int64_t kColParts = 4;  // partial each) x column ranges (one grad_a partial each)
// Register tiles, sized for 32 vector registers with 64-byte vectors (AVX-512), 16 otherwise.
constexpr int kRT = 4;  // logit tile: kRT rows x kVT vectors of columns
template <int W>
constexpr int kVT = W == 64 ? 4 : 2;
template <int W>
constexpr int kGR = W == 64 ? 8 : 4;  // gradient tile: kGR rows x kGV vectors of features
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

// The kernels work in base 2: a is packed as a * scale * log2(e), so each logit comes out as
// log2 of its exponential and the lse shifts are converted once per row. 2^x: x = k + r,
// |r| <= 1/2, 2^r by a polynomial, 2^k put in the exponent (vscalefps on AVX-512; bit
// arithmetic otherwise, x clamped to [kLow, kHigh]). Inputs are logits minus a shift: at most
// kSlack above it in the forward (larger ones trip its check: a sum above 2^kSlack, inf on
// AVX-512), below 0 in the backward. Inputs below kLow (including -inf: padding) give 0 on
// AVX-512 and 2^kLow, a normal number, elsewhere; either way far below anything a sum here can
// see (each sum has a term >= 1; padding rows and columns multiply zero rows of a or b).
template <typename T>
struct Exp2Poly;
template <>
struct Exp2Poly<float> {
  // Near-minimax degree 6 on [-1/2, 1/2] with p(0) = 1: within 1.2 ulp in float arithmetic.
  static constexpr int kDegree = 6;
  static constexpr float kCoef[kDegree + 1] = {
      1.0f,           0.6931471825f,  0.24022647738f, 0.055503323674f,
      0.00961843692f, 0.00133988750f, 0.000153533620f};
  static constexpr float kLow = -125.0f, kHigh = 64.0f, kMagic = 0x1.8p23f;
  typedef int32_t Word;
  static constexpr int kMantissa = 23, kBias = 127;
};
template <>
struct Exp2Poly<double> {
  // Taylor degree 13 of exp(r ln2): the remainder is below 0.1 ulp on |r| <= 1/2.
  static constexpr int kDegree = 13;
  static constexpr double kLn2 = 0.6931471805599453094;
  static constexpr double kCoef[kDegree + 1] = {
      1.0,
      kLn2,
      kLn2 * kLn2 / 2,
      kLn2 * kLn2 * kLn2 / 6,
      kLn2 * kLn2 * kLn2 * kLn2 / 24,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 120,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 720,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 5040,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 40320,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 362880,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 3628800,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 39916800,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 /
          479001600,
      kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 /
          6227020800};
  static constexpr double kLow = -1020.0, kHigh = 512.0, kMagic = 0x1.8p52;
  typedef int64_t Word;
  static constexpr int kMantissa = 52, kBias = 1023;
};

template <typename V, typename T>
MMFAST_INLINE V exp2_poly(V r) {
  using E = Exp2Poly<T>;
  V p = V{} + E::kCoef[E::kDegree];
#pragma GCC unroll 16
  for (int i = E::kDegree - 1; i >= 0; --i) p = p * r + E::kCoef[i];
  return p;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MMFAST_HAVE_V4 1
// Not always_inline: the AVX-512 kernels below are flattened, which inlines these there.
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
inline __m512 exp2_v4(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));  // 2^-150 scales to 0 (and -inf to -150)
  const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(exp2_poly<__m512, float>(_mm512_sub_ps(x, k)), k);
}
inline __m512d exp2_v4(__m512d x) {
  x = _mm512_max_pd(x, _mm512_set1_pd(-1100.0));
  const __m512d k = _mm512_roundscale_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_pd(exp2_poly<__m512d, double>(_mm512_sub_pd(x, k)), k);
}
#pragma GCC pop_options
#else
#define MMFAST_HAVE_V4 0
#endif

template <typename T, int W>
MMFAST_INLINE VecT<T, W> vexp2(VecT<T, W> x) {
#if MMFAST_HAVE_V4
  if constexpr (W == 64) return exp2_v4(x);
#endif
  using E = Exp2Poly<T>;
  using V = VecT<T, W>;
  typedef typename E::Word Bits __attribute__((vector_size(W)));
  const V low = V{} + E::kLow, high = V{} + E::kHigh;
  x = low > x ? low : x;
  x = x > high ? high : x;  // finite, yet enough to trip the forward's slack check
  const V kd = x + E::kMagic;  // round(x), in the low mantissa bits
  const V k = kd - E::kMagic;
  const V p = exp2_poly<V, T>(x - k);
  const Bits two_k = (__builtin_bit_cast(Bits, kd) << E::kMantissa) +
                     (static_cast<typename E::Word>(E::kBias) << E::kMantissa);
  return p * __builtin_bit_cast(V, two_k);
}

// Sets flush-to-zero and denormals-are-zero for the calling thread while alive, as BLAS
// libraries do: a probability below the float range times a feature would otherwise be a
// denormal product, and each such FMA costs a microcode assist (the padding columns alone
// made the backward 3x slower). Values that small cannot change any sum here.
struct FlushDenormals {
#if defined(__x86_64__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Aligned, zeroed scratch.
template <typename T>
struct Buf {
  std::unique_ptr<T, void (*)(void*)> p;
  explicit Buf(int64_t n, bool zero = true)
      : p(static_cast<T*>(std::aligned_alloc(64, round_up(std::max<int64_t>(n, 1) * sizeof(T), 64))),
          &std::free) {
    TORCH_CHECK(p, "solosim: out of memory");
    if (zero) std::memset(p.get(), 0, n * sizeof(T));
  }
  T* get() const { return p.get(); }
};

// a and b in the layouts the tiles read, features zero-padded to dv (a multiple of kGV
// vectors): as = a * scale * log2(e) and ar = a, [rows_pad, dv]; br = b, [cols_pad, dv]; bt =
// b^T by chunks of kCols columns, [cols_pad / kCols, dv, kCols] (a chunk is contiguous: no
// cache-set aliasing whatever n); bias [cols_pad]: 0, or -inf on padding columns so that they
// drop out of every sum; pos [rows_pad]: each row's positive logit (base 2), the forward's
// first shift.
template <typename T>
struct Packed {
  int64_t n, d, dv, rows_pad, cols_pad;
  Buf<T> as, ar, br, bt, bias, pos;

  Packed(const at::Tensor& at_a, const at::Tensor& at_b, double scale, int64_t lanes)
      : n(at_a.size(0)), d(at_a.size(1)), dv(round_up(d, kGV * lanes)),
        rows_pad(round_up(n, kRows)), cols_pad(round_up(n, kCols)), as(rows_pad * dv),
        ar(rows_pad * dv), br(cols_pad * dv), bt(dv * cols_pad), bias(cols_pad),
        pos(rows_pad) {
    const T* pa = at_a.data_ptr<T>();
    const T* pb = at_b.data_ptr<T>();
    const double scale2 = scale * 1.4426950408889634074;
    T* a_s = as.get();
    T* a_r = ar.get();
    T* b_r = br.get();
    T* b_t = bt.get();
    for (int64_t i = 0; i < n; ++i) {
      T dot = 0;
      for (int64_t f = 0; f < d; ++f) {
        const T x = pa[i * d + f], y = pb[i * d + f];
        a_r[i * dv + f] = x;
        a_s[i * dv + f] = static_cast<T>(x * scale2);
        b_r[i * dv + f] = y;
        b_t[(i / kCols * dv + f) * kCols + i % kCols] = y;
        dot += a_s[i * dv + f] * y;
      }
      pos.get()[i] = dot;
    }
    std::fill(bias.get() + n, bias.get() + cols_pad, -std::numeric_limits<T>::infinity());
  }
  int64_t blocks() const { return rows_pad / kRows; }
};

// out[rr * ld + [0, kVT<W> L)] = logits (base 2) of rows r + rr against columns c + [0, kVT<W> L),
// minus shift[rr], for rr < kRT. The accumulators go to memory (L1) rather than straight into
// the exp: with the exp's constants live too, the tile would not fit in the vector registers.
template <typename T, int W>
MMFAST_INLINE void logit_tile(const Packed<T>& pk, int64_t r, int64_t c, const T* shift, T* out,
                              int64_t ld) {
  using V = VecT<T, W>;
  constexpr int L = W / sizeof(T);
  const int64_t dv = pk.dv;
  const T* a = pk.as.get() + r * dv;
  const T* bt = pk.bt.get() + c / kCols * dv * kCols + c % kCols;
  V acc[kRT][kVT<W>];
#pragma GCC unroll 4
  for (int v = 0; v < kVT<W>; ++v) {
    const V cb = vload<T, W>(pk.bias.get() + c + v * L);
#pragma GCC unroll 4
    for (int rr = 0; rr < kRT; ++rr) acc[rr][v] = cb - shift[rr];
  }
  for (int64_t f = 0; f < dv; ++f) {
    V x[kVT<W>];
#pragma GCC unroll 4
    for (int v = 0; v < kVT<W>; ++v) x[v] = vload<T, W>(bt + f * kCols + v * L);
#pragma GCC unroll 4
    for (int rr = 0; rr < kRT; ++rr) {
      const T w = a[rr * dv + f];
#pragma GCC unroll 4
      for (int v = 0; v < kVT<W>; ++v) acc[rr][v] += w * x[v];
    }
  }
#pragma GCC unroll 4
  for (int rr = 0; rr < kRT; ++rr) {
#pragma GCC unroll 4
    for (int v = 0; v < kVT<W>; ++v) vstore<T, W>(out + rr * ld + v * L, acc[rr][v]);
  }
}

// lse of rows [r0, r0 + kRows). s: scratch [kRT, kCols].
template <typename T, int W>
MMFAST_INLINE void forward_block_impl(const Packed<T>& pk, int64_t r0, T* s, T* lse) {
  using V = VecT<T, W>;
  using acc_t = at::acc_type<T, false>;
  constexpr int L = W / sizeof(T);
  constexpr int kSlack = 16;  // 2^16 n stays far from overflow
  T m[kRows];               // shifts, base 2
  acc_t total[kRows];       // sum of 2^(logit - m)
  for (int64_t i = 0; i < kRows; ++i) {
    m[i] = pk.pos.get()[r0 + i];
    total[i] = 0;
  }
  for (int64_t c0 = 0; c0 < pk.cols_pad; c0 += kCols) {
    for (int64_t i0 = 0; i0 < kRows; i0 += kRT) {
      for (;;) {
        for (int64_t c = 0; c < kCols; c += kVT<W> * L)
          logit_tile<T, W>(pk, r0 + i0, c0 + c, m + i0, s + c, kCols);
        T sums[kRT];
        bool redo = false;
        for (int rr = 0; rr < kRT; ++rr) {
          const T* row = s + rr * kCols;
          V sum = {};
#pragma GCC unroll 8
          for (int64_t c = 0; c < kCols; c += L) sum += vexp2<T, W>(vload<T, W>(row + c));
          sums[rr] = hsum<T, W>(sum);
          // A sum above 2^kSlack (or inf, or from a logit above its shift + kSlack): raise the
          // shift to the chunk's largest logit (at least kSlack - log2(kCols) above it), redo.
          if (sums[rr] > T(1 << kSlack)) {
            V top = V{} - std::numeric_limits<T>::infinity();
            for (int64_t c = 0; c < kCols; c += L) top = vmax<T, W>(top, vload<T, W>(row + c));
            const T raised = m[i0 + rr] + hmax<T, W>(top);
            total[i0 + rr] *= std::exp2(static_cast<acc_t>(m[i0 + rr]) - raised);
            m[i0 + rr] = raised;
            redo = true;
          }
        }
        if (redo) continue;
        for (int rr = 0; rr < kRT; ++rr) total[i0 + rr] += sums[rr];
        break;
      }
    }
  }
  constexpr acc_t kLn2 = 0.6931471805599453094;
  for (int64_t i = 0; i < kRows; ++i)
    lse[i] = static_cast<T>(m[i] * kLn2 + std::log(total[i]));
}

// out[o] += sum_k P(o, k) src[k] for kOut rows of out [., dv] and kIn rows of src [., dv],
// the weights read from the tile p at p[o * kOutStride + k * kInStride]: a kGR x kGV register
// tile of out, the weights broadcast against rows of src (features as the SIMD lanes).
template <typename T, int W, int64_t kOut, int64_t kIn, int64_t kOutStride, int64_t kInStride>
MMFAST_INLINE void add_weighted_rows(T* out, const T* src, const T* p, int64_t dv) {
  using V = VecT<T, W>;
  constexpr int L = W / sizeof(T);
  for (int64_t o0 = 0; o0 < kOut; o0 += kGR<W>) {
    for (int64_t f = 0; f < dv; f += kGV * L) {
      V acc[kGR<W>][kGV];
#pragma GCC unroll 8
      for (int r = 0; r < kGR<W>; ++r) {
#pragma GCC unroll 2
        for (int g = 0; g < kGV; ++g) acc[r][g] = vload<T, W>(out + (o0 + r) * dv + f + g * L);
      }
      for (int64_t k = 0; k < kIn; ++k) {
        V x[kGV];
#pragma GCC unroll 2
        for (int g = 0; g < kGV; ++g) x[g] = vload<T, W>(src + k * dv + f + g * L);
#pragma GCC unroll 8
        for (int r = 0; r < kGR<W>; ++r) {
          const T w = p[(o0 + r) * kOutStride + k * kInStride];
#pragma GCC unroll 2
          for (int g = 0; g < kGV; ++g) acc[r][g] += w * x[g];
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < kGR<W>; ++r) {
#pragma GCC unroll 2
        for (int g = 0; g < kGV; ++g) vstore<T, W>(out + (o0 + r) * dv + f + g * L, acc[r][g]);
      }
    }
  }
}

// One part of the backward: the row blocks [blk_begin, blk_end) against the columns
// [col_begin, col_end), chunk by chunk of kBCols columns, so that the chunk's b (both layouts)
// and its grad_b accumulators stay in L1 while the part's rows pass. ga [rows_pad, dv]: the
// grad_a partial of this column range (this part's rows written); gb [cols_pad, dv]: the grad_b
// partial of this row range (this part's columns written). shift [rows_pad]: lse in base 2,
// +inf on padding rows. p: scratch [kRows, kBCols].
template <typename T, int W>
MMFAST_INLINE void backward_part_impl(const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,
                                      int64_t col_begin, int64_t col_end, const T* shift, T* p,
                                      T* ga, T* gb) {
  constexpr int L = W / sizeof(T);
  const int64_t dv = pk.dv;
  std::memset(ga + blk_begin * kRows * dv, 0, (blk_end - blk_begin) * kRows * dv * sizeof(T));
  for (int64_t c0 = col_begin; c0 < col_end; c0 += kBCols) {
    T* gbc = gb + c0 * dv;
    std::memset(gbc, 0, kBCols * dv * sizeof(T));
    const T* b = pk.br.get() + c0 * dv;
    for (int64_t r0 = blk_begin * kRows; r0 < blk_end * kRows; r0 += kRows) {
      // P = 2^(logit - lse) of the tile.
      for (int64_t i0 = 0; i0 < kRows; i0 += kRT) {
        for (int64_t c = 0; c < kBCols; c += kVT<W> * L)
          logit_tile<T, W>(pk, r0 + i0, c0 + c, shift + r0 + i0, p + i0 * kBCols + c, kBCols);
      }
#pragma GCC unroll 4
      for (int64_t k = 0; k < kRows * kBCols; k += L) vstore<T, W>(p + k, vexp2<T, W>(vload<T, W>(p + k)));
      // ga[i] += sum_j P_ij b_j (the tile by rows), gb[j] += sum_i P_ij a_i (by columns).
      add_weighted_rows<T, W, kRows, kBCols, kBCols, 1>(ga + r0 * dv, b, p, dv);
      add_weighted_rows<T, W, kBCols, kRows, 1, kBCols>(gbc, pk.ar.get() + r0 * dv, p, dv);
    }
  }
}

// The compiled variants, by vector width: 64 bytes on x86-64-v4 (flattened, so that the
// AVX-512 exp is inlined), 32 on x86-64-v3 (AVX2 + FMA), 16 otherwise (SSE2, NEON: wider
// generic vectors would be split through the stack there). Chosen once from the CPU.
template <typename T, int W>
MMFAST_INLINE void forward_block_w(const Packed<T>& pk, int64_t r0, T* s, T* lse) {
  forward_block_impl<T, W>(pk, r0, s, lse);
}
template <typename T, int W>
MMFAST_INLINE void backward_part_w(const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,
                                   int64_t col_begin, int64_t col_end, const T* shift, T* p,
                                   T* ga, T* gb) {
  backward_part_impl<T, W>(pk, blk_begin, blk_end, col_begin, col_end, shift, p, ga, gb);
}
#if MMFAST_HAVE_V4
#define MMFAST_SOLOSIM_VARIANT(W, ATTR)                                                         \
  template <typename T>                                                                       \
  ATTR void forward_block_##W(const Packed<T>& pk, int64_t r0, T* s, T* lse) {                \
    forward_block_w<T, W>(pk, r0, s, lse);                                                     \
  }                                                                                           \
  template <typename T>                                                                       \
  ATTR void backward_part_##W(const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,        \
                              int64_t col_begin, int64_t col_end, const T* shift, T* p, T* ga, \
                              T* gb) {                                                        \
    backward_part_w<T, W>(pk, blk_begin, blk_end, col_begin, col_end, shift, p, ga, gb);       \
  }
MMFAST_SOLOSIM_VARIANT(64, __attribute__((target("arch=x86-64-v4"), flatten)))
MMFAST_SOLOSIM_VARIANT(32, __attribute__((target("arch=x86-64-v3"))))
MMFAST_SOLOSIM_VARIANT(16, )
#undef MMFAST_SOLOSIM_VARIANT

// MMFAST_SOLOSIM_VECTOR_BYTES=32 or 16 picks a narrower variant than the CPU allows (tests of
// the fallbacks on an AVX-512 machine); a wider one than the CPU supports is ignored.
int vector_bytes() {
  static const int bytes = [] {
    const int best = __builtin_cpu_supports("x86-64-v4")   ? 64
                     : __builtin_cpu_supports("x86-64-v3") ? 32
                                                           : 16;
    const char* env = std::getenv("MMFAST_SOLOSIM_VECTOR_BYTES");
    const int want = env ? std::atoi(env) : best;
    return (want == 16 || want == 32 || want == 64) && want <= best ? want : best;
  }();
  return bytes;
}

template <typename T>
void forward_block(int w, const Packed<T>& pk, int64_t r0, T* s, T* lse) {
  if (w == 64) return forward_block_64<T>(pk, r0, s, lse);
  if (w == 32) return forward_block_32<T>(pk, r0, s, lse);
  forward_block_16<T>(pk, r0, s, lse);
}
template <typename T>
void backward_part(int w, const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,
                   int64_t col_begin, int64_t col_end, const T* shift, T* p, T* ga, T* gb) {
  if (w == 64) return backward_part_64<T>(pk, blk_begin, blk_end, col_begin, col_end, shift, p, ga, gb);
  if (w == 32) return backward_part_32<T>(pk, blk_begin, blk_end, col_begin, col_end, shift, p, ga, gb);
  backward_part_16<T>(pk, blk_begin, blk_end, col_begin, col_end, shift, p, ga, gb);
}
#else
int vector_bytes() { return 16; }
template <typename T>
void forward_block(int, const Packed<T>& pk, int64_t r0, T* s, T* lse) {
  forward_block_w<T, 16>(pk, r0, s, lse);
}
template <typename T>
void backward_part(int, const Packed<T>& pk, int64_t blk_begin, int64_t blk_end,
                   int64_t col_begin, int64_t col_end, const T* shift, T* p, T* ga, T* gb) {
  backward_part_w<T, 16>(pk, blk_begin, blk_end, col_begin, col_end, shift, p, ga, gb);
}
#endif

// Runs work(item) for item in [0, items) on the torch threads, each thread taking the next
// item when done with its last: a thread slowed down (a shared core) takes fewer. Results do
// not depend on which thread runs an item.
template <typename F>
void for_each_item(int64_t items, const F& work) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(items, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    const FlushDenormals ftz;
    for (int64_t item; (item = next.fetch_add(1)) < items;) work(item);
  });
}

void solosim_forward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                         at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_cpu", [&] {
    const int w = vector_bytes();
    const Packed<scalar_t> pk(a, b, scale, w / sizeof(scalar_t));
    Buf<scalar_t> out(pk.rows_pad);
    for_each_item(pk.blocks(), [&](int64_t blk) {
      alignas(64) scalar_t s[kRT * kCols];
      forward_block<scalar_t>(w, pk, blk * kRows, s, out.get() + blk * kRows);
    });
    std::copy_n(out.get(), pk.n, lse.data_ptr<scalar_t>());
  });
}

void solosim_backward_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                          const at::Tensor& lse, at::Tensor& pa, at::Tensor& pb) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mmfast_solosim_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    const int w = vector_bytes();
    const Packed<scalar_t> pk(a, b, scale, w / sizeof(scalar_t));
    const int64_t n = pk.n, d = pk.d, dv = pk.dv, blocks = pk.blocks();
    Buf<scalar_t> shift(pk.rows_pad);  // lse in base 2, +inf on padding rows (P = 0)
    const scalar_t* plse = lse.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i)
      shift.get()[i] = static_cast<scalar_t>(plse[i] * acc_t(1.4426950408889634074));
    std::fill(shift.get() + n, shift.get() + pk.rows_pad,
              std::numeric_limits<scalar_t>::infinity());
    // A fixed grid of parts (whatever the thread count): each row range keeps a grad_b partial,
    // each column range a grad_a partial; the partials are added in order.
    const int64_t chunks = pk.cols_pad / kBCols;
    const int64_t row_parts = std::min<int64_t>(blocks, kRowParts);
    const int64_t col_parts = std::min<int64_t>(chunks, kColParts);
    const int64_t part_size = pk.cols_pad * dv;  // >= rows_pad * dv
    Buf<scalar_t> ga(col_parts * part_size, /*zero=*/false);
    Buf<scalar_t> gb(row_parts * part_size, /*zero=*/false);
    for_each_item(row_parts * col_parts, [&](int64_t item) {
      const int64_t r = item / col_parts, c = item % col_parts;
      alignas(64) scalar_t p[kRows * kBCols];
      backward_part<scalar_t>(w, pk, r * blocks / row_parts, (r + 1) * blocks / row_parts,
                              c * chunks / col_parts * kBCols, (c + 1) * chunks / col_parts * kBCols,
                              shift.get(), p, ga.get() + c * part_size, gb.get() + r * part_size);
    });
    scalar_t* out_a = pa.data_ptr<scalar_t>();
    scalar_t* out_b = pb.data_ptr<scalar_t>();
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t f = 0; f < d; ++f) {
          acc_t sa = 0, sb = 0;
          for (int64_t c = 0; c < col_parts; ++c) sa += ga.get()[c * part_size + i * dv + f];
          for (int64_t r = 0; r < row_parts; ++r) sb += gb.get()[r * part_size + i * dv + f];
          out_a[i * d + f] = static_cast<scalar_t>(sa);
          out_b[i * d + f] = static_cast<scalar_t>(sb);
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
