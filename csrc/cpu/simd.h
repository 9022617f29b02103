// Fixed-width SIMD for the CPU kernels, without ATen's per-ISA build: GCC/Clang vector
// extensions of 32 bytes (one AVX2 register, two SSE2 ones). Kernels that use it compile their
// hot function per x86-64 ISA level with MMFAST_SIMD_CLONES (v4: AVX-512VL, 32 registers;
// v3: AVX2+FMA; baseline), the choice made once at load time by the CPU's features, so the
// wheel still runs on any x86-64 CPU. ("arch=haswell" would test the CPU model, not features.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MMFAST_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MMFAST_SIMD_CLONES
#endif
#define MMFAST_INLINE inline __attribute__((always_inline))
// The 32-byte vectors only cross always-inlined calls, so their ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mmfast {
namespace simd {

template <typename T>
struct Traits;

template <>
struct Traits<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef uint32_t Word;
  typedef Word Bits __attribute__((vector_size(32)));
  static constexpr int kMantissa = 23, kBias = 127;
  static constexpr int kExpDegree = 7;  // Taylor remainder r^8/8! < 0.1 ulp on |r| <= ln2/2
  static constexpr float kMagic = 0x1.8p23f;  // adding it rounds to an integer, kept in the low bits
  static constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
};

template <>
struct Traits<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef uint64_t Word;
  typedef Word Bits __attribute__((vector_size(32)));
  static constexpr int kMantissa = 52, kBias = 1023;
  static constexpr int kExpDegree = 13;  // r^14/14! < 0.1 ulp on |r| <= ln2/2
  static constexpr double kMagic = 0x1.8p52;
  static constexpr double kLn2Hi = 0x1.62e42fee00000p-1, kLn2Lo = 0x1.a39ef35793c76p-33;
};

template <typename T>
using Vec = typename Traits<T>::V;
template <typename T>
constexpr int kLanes = sizeof(Vec<T>) / sizeof(T);

template <typename T>
MMFAST_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
MMFAST_INLINE void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
MMFAST_INLINE Vec<T> splat(T s) {
  return Vec<T>{} + s;
}
template <typename T>
MMFAST_INLINE T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

// exp(x) to about 1 ulp for x in [-80, 80] (inputs are clamped to it: enough for every kernel
// here, and 2^k stays a normal number in float): x = k ln2 + r, exp(r) by its Taylor series.
template <typename T>
MMFAST_INLINE Vec<T> exp(Vec<T> x) {
  using Tr = Traits<T>;
  const Vec<T> lo = splat<T>(-80), hi = splat<T>(80);
  const Vec<T> xc = x < lo ? lo : (x > hi ? hi : x);
  const Vec<T> kd = xc * T(1.4426950408889634) + Tr::kMagic;
  const Vec<T> k = kd - Tr::kMagic;
  const Vec<T> r = (xc - k * Tr::kLn2Hi) - k * Tr::kLn2Lo;
  T coef[Tr::kExpDegree + 1];
  coef[0] = 1;
  for (int i = 1; i <= Tr::kExpDegree; ++i) coef[i] = coef[i - 1] / T(i);
  Vec<T> p = splat<T>(coef[Tr::kExpDegree]);
  for (int i = Tr::kExpDegree - 1; i >= 0; --i) p = p * r + coef[i];
  // k sits in kd's low mantissa bits: shifting them into the exponent field builds 2^k.
  using Bits = typename Tr::Bits;
  const Bits two_k = (__builtin_bit_cast(Bits, kd) << Tr::kMantissa) +
                     (static_cast<typename Tr::Word>(Tr::kBias) << Tr::kMantissa);
  return x < lo ? Vec<T>{} : p * __builtin_bit_cast(Vec<T>, two_k);  // x < -80: 0, as exp underflows
}

// The two register-tiled small GEMMs of the kernels, on row-major panels whose columns are the
// SIMD dimension (the rows of a block of data, packed feature-major).
constexpr int64_t kTile = 4;  // rows per register tile: callers pad row counts to a multiple

// out[j, c] += sum_k a[j, k] in[k, c] for j < rows (a multiple of kTile), k < inner,
// c < cols (a multiple of 2 lanes). a[j, k] is a[j * a_js + k * a_ks], so a may be a transposed
// view. Tile: 4 rows x 2 vectors of accumulators, one broadcast per row and k.
template <typename T>
MMFAST_INLINE void gemm_bcast(int64_t rows, int64_t inner, int64_t cols, const T* a, int64_t a_js,
                              int64_t a_ks, const T* in, int64_t in_s, T* out, int64_t out_s) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    for (int64_t c = 0; c < cols; c += 2 * L) {
      Vec<T> acc[kTile][2];
      for (int64_t jj = 0; jj < kTile; ++jj) {
        acc[jj][0] = load(out + (j0 + jj) * out_s + c);
        acc[jj][1] = load(out + (j0 + jj) * out_s + c + L);
      }
      for (int64_t k = 0; k < inner; ++k) {
        const Vec<T> x0 = load(in + k * in_s + c), x1 = load(in + k * in_s + c + L);
        for (int64_t jj = 0; jj < kTile; ++jj) {
          const T w = a[(j0 + jj) * a_js + k * a_ks];
          acc[jj][0] += w * x0;
          acc[jj][1] += w * x1;
        }
      }
      for (int64_t jj = 0; jj < kTile; ++jj) {
        store(out + (j0 + jj) * out_s + c, acc[jj][0]);
        store(out + (j0 + jj) * out_s + c + L, acc[jj][1]);
      }
    }
  }
}

// g[j, f] += sum_c d[j, c] in[f, c] for j < rows (a multiple of kTile), f < feats (a multiple
// of 2), c < cols (a multiple of lanes): products summed along the SIMD dimension, so each
// 4 x 2 tile of vector sums is reduced across lanes once, in T, and added to g in acc_t.
template <typename T, typename acc_t>
MMFAST_INLINE void gemm_dot(int64_t rows, int64_t feats, int64_t cols, const T* d, int64_t d_s,
                            const T* in, int64_t in_s, acc_t* g, int64_t g_s) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    for (int64_t f0 = 0; f0 < feats; f0 += 2) {
      Vec<T> acc[kTile][2] = {};
      for (int64_t c = 0; c < cols; c += L) {
        const Vec<T> x0 = load(in + f0 * in_s + c), x1 = load(in + (f0 + 1) * in_s + c);
        for (int64_t jj = 0; jj < kTile; ++jj) {
          const Vec<T> dj = load(d + (j0 + jj) * d_s + c);
          acc[jj][0] += dj * x0;
          acc[jj][1] += dj * x1;
        }
      }
      for (int64_t jj = 0; jj < kTile; ++jj) {
        g[(j0 + jj) * g_s + f0] += hsum<T>(acc[jj][0]);
        g[(j0 + jj) * g_s + f0 + 1] += hsum<T>(acc[jj][1]);
      }
    }
  }
}

// Sets out[j, c] = v[j] for j < rows, c < cols: the bias a gemm_bcast then adds to.
template <typename T>
MMFAST_INLINE void fill_rows(int64_t rows, int64_t cols, const T* v, T* out) {
  for (int64_t j = 0; j < rows; ++j) std::fill(out + j * cols, out + (j + 1) * cols, v ? v[j] : T(0));
}

}  // namespace simd
}  // namespace mmfast
