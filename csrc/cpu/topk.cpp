// CPU kernel of topk_scores. Two paths, with the same results:
//
// Full rows (n_keys <= kRowKeys, every dataset of the MMRec family): a thread scores a block
// of queries against all keys with one GEMM (at::mm_out; MKL runs single-threaded inside the
// parallel region), then selects each query's k best from its row in three passes: (1) the
// row's maxima over about 2k buckets (SIMD, lane-wise over consecutive vectors); (2) t = the k-th
// largest of those maxima, a lower bound of the row's k-th best (k of its scores are >= t);
// (3) every score >= t is a candidate (about k of them on a row in random order), and the
// candidates are ordered by the contract. Excluded keys are set to NaN in the row first, and
// NaN never passes a comparison, so they never enter.
//
// Key tiles (more keys): a block of kQueryBlock queries is scored against one tile of keys at
// a time into a small per-thread buffer, and each score row is folded into a per-query
// candidate list: once k keys are held, a key enters only when it beats the running k-th
// best, and when the list fills up an nth_element cut brings it back to the k best. Keys are
// visited in ascending order, so a later key that ties the k-th best loses the tie.
//
// Either way the blocks depend only on the shapes, never on the thread count, so the results
// are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define MMFAST_TOPK_AVX2 1
#endif

#include <algorithm>
#include <functional>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "../bind.h"
#include "../topk.h"
#include "simd.h"

namespace mmfast {
namespace {

constexpr int64_t kQueryBlock = 128;

// Keys per tile: the tile of keys stays within ~128 KiB of cache (and so, for d = 64, does
// the tile of scores: 128 queries x 512 keys in float32 is 256 KiB).
int64_t key_tile(int64_t d, size_t elem) {
  const int64_t by_cache = (128 * 1024) / std::max<int64_t>(1, d * static_cast<int64_t>(elem));
  return std::clamp<int64_t>(by_cache / 16 * 16, 256, 2048);
}

// The first j in [begin, end) with s[j] > threshold, else end. The scan over every score is
// the hot loop: AVX2 compares 8 floats (4 doubles) at a time where the CPU has it (the
// extension is built for the baseline ISA, so it is chosen at run time).
#ifdef MMFAST_TOPK_AVX2
__attribute__((target("avx2"))) int64_t next_above_avx2(const float* s, int64_t j, int64_t end,
                                                        float threshold) {
  const __m256 t = _mm256_set1_ps(threshold);
  for (; j + 8 <= end; j += 8) {
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + j), t, _CMP_GT_OQ));
    if (mask != 0) return j + __builtin_ctz(mask);
  }
  for (; j < end; ++j)
    if (s[j] > threshold) return j;
  return end;
}

__attribute__((target("avx2"))) int64_t next_above_avx2(const double* s, int64_t j, int64_t end,
                                                        double threshold) {
  const __m256d t = _mm256_set1_pd(threshold);
  for (; j + 4 <= end; j += 4) {
    const int mask = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(s + j), t, _CMP_GT_OQ));
    if (mask != 0) return j + __builtin_ctz(mask);
  }
  for (; j < end; ++j)
    if (s[j] > threshold) return j;
  return end;
}

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

template <typename scalar_t>
inline int64_t next_above(const scalar_t* s, int64_t j, int64_t end, scalar_t threshold) {
#ifdef MMFAST_TOPK_AVX2
  if (kHaveAvx2) return next_above_avx2(s, j, end, threshold);
#endif
  for (; j < end; ++j)
    if (s[j] > threshold) return j;
  return end;
}

// The first j in [begin, end) with s[j] >= threshold (never NaN), else end: the full-row
// path's candidate scan, AVX2 where the CPU has it.
#ifdef MMFAST_TOPK_AVX2
__attribute__((target("avx2"))) int64_t next_at_least_avx2(const float* s, int64_t j, int64_t end,
                                                           float threshold) {
  const __m256 t = _mm256_set1_ps(threshold);
  for (; j + 16 <= end; j += 16) {
    const int lo = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + j), t, _CMP_GE_OQ));
    const int hi = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + j + 8), t, _CMP_GE_OQ));
    const int mask = lo | (hi << 8);
    if (mask != 0) return j + __builtin_ctz(mask);
  }
  for (; j < end; ++j)
    if (s[j] >= threshold) return j;
  return end;
}

__attribute__((target("avx2"))) int64_t next_at_least_avx2(const double* s, int64_t j,
                                                           int64_t end, double threshold) {
  const __m256d t = _mm256_set1_pd(threshold);
  for (; j + 8 <= end; j += 8) {
    const int lo = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(s + j), t, _CMP_GE_OQ));
    const int hi = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(s + j + 4), t, _CMP_GE_OQ));
    const int mask = lo | (hi << 4);
    if (mask != 0) return j + __builtin_ctz(mask);
  }
  for (; j < end; ++j)
    if (s[j] >= threshold) return j;
  return end;
}
#endif

template <typename scalar_t>
inline int64_t next_at_least(const scalar_t* s, int64_t j, int64_t end, scalar_t threshold) {
#ifdef MMFAST_TOPK_AVX2
  if (kHaveAvx2) return next_at_least_avx2(s, j, end, threshold);
#endif
  for (; j < end; ++j)
    if (s[j] >= threshold) return j;
  return end;
}

template <typename scalar_t>
struct Candidate {
  scalar_t score;
  int64_t index;
};

// How a candidate is stored. float: one uint64 whose integer order is the contract's order
// (the score's bits made monotone in the high word, the complemented index in the low word),
// so cuts and sorts compare integers. double: a (score, index) pair. -0.0 is stored as +0.0,
// which compares equal to it.
template <typename scalar_t>
struct Packed;

template <>
struct Packed<float> {
  using Item = uint64_t;
  static Item make(float s, int64_t index) {
    s = s == 0.0f ? 0.0f : s;
    uint32_t u;
    std::memcpy(&u, &s, sizeof(u));
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (static_cast<uint64_t>(u) << 32) | (0xffffffffu - static_cast<uint32_t>(index));
  }
  static float score(Item item) {
    uint32_t u = static_cast<uint32_t>(item >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    float s;
    std::memcpy(&s, &u, sizeof(s));
    return s;
  }
  static int64_t index(Item item) {
    return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(item));
  }
  static bool better(Item a, Item b) { return a > b; }
};

template <>
struct Packed<double> {
  using Item = Candidate<double>;
  static Item make(double s, int64_t index) { return {s, index}; }
  static double score(const Item& item) { return item.score; }
  static int64_t index(const Item& item) { return item.index; }
  // The contract's order: larger score first, then smaller index.
  static bool better(const Item& a, const Item& b) {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
  }
};

// The running top-k of one query: a list of up to `cap` candidates, cut to the k best when
// full. Once a cut has happened, `threshold` is the k-th best score seen so far.
template <typename scalar_t>
class RunningTopk {
  using P = Packed<scalar_t>;

 public:
  void reset(int64_t k, int64_t cap) {
    k_ = k;
    cap_ = cap;
    items_.clear();
    items_.reserve(cap);
    full_ = false;
    threshold_ = -std::numeric_limits<scalar_t>::infinity();
  }

  // Offers keys first_index + [begin, end) with scores s[begin, end).
  void offer(const scalar_t* s, int64_t begin, int64_t end, int64_t first_index) {
    int64_t j = begin;
    for (; !full_ && j < end; ++j) consider(s[j], first_index + j);
    // Once k are held, only scores above the k-th best can enter: jump from one to the next.
    while ((j = next_above(s, j, end, threshold_)) < end) {
      consider(s[j], first_index + j);
      ++j;
    }
  }

  // Writes the k best in order, then -inf / -1 padding.
  void write(scalar_t* values, int64_t* indices) {
    const int64_t n = std::min<int64_t>(k_, static_cast<int64_t>(items_.size()));
    std::partial_sort(items_.begin(), items_.begin() + n, items_.end(), P::better);
    for (int64_t i = 0; i < n; ++i) {
      values[i] = P::score(items_[i]);
      indices[i] = P::index(items_[i]);
    }
    std::fill(values + n, values + k_, -std::numeric_limits<scalar_t>::infinity());
    std::fill(indices + n, indices + k_, int64_t(-1));
  }

 private:
  inline void consider(scalar_t score, int64_t index) {
    // Until k are held every non-NaN score enters (-inf included); after, only scores above
    // the k-th best (a later key never wins a tie). NaN fails both tests.
    if (score > threshold_ || (!full_ && score == score)) {
      items_.push_back(P::make(score, index));
      const int64_t n = static_cast<int64_t>(items_.size());
      if (!full_ && n == k_) {  // the k-th best of exactly k is the smallest
        threshold_ = score;
        for (const auto& c : items_) threshold_ = std::min(threshold_, P::score(c));
        full_ = true;
      } else if (n == cap_) {
        cut();
      }
    }
  }

  void cut() {
    std::nth_element(items_.begin(), items_.begin() + (k_ - 1), items_.end(), P::better);
    threshold_ = P::score(items_[k_ - 1]);
    items_.resize(k_);
  }

  int64_t k_ = 1, cap_ = 2;
  std::vector<typename P::Item> items_;
  bool full_ = false;
  scalar_t threshold_ = 0;
};

// The exclude CSR as both paths read it. The driver does not read it (see topk.cpp); here it
// is in host memory, so its structure is checked as it is read, at no extra pass: a bad row or
// id is skipped and reported once the threads are done, and nothing is read out of bounds.
template <typename index_t>
class ExcludeRows {
 public:
  ExcludeRows(const TopkProblem& p, int64_t n_queries, int64_t n_keys)
      : rowptr_(p.has_exclude ? p.ex_rowptr.data_ptr<int64_t>() : nullptr),
        col_(p.has_exclude ? p.ex_col.data_ptr<index_t>() : nullptr),
        nnz_(p.has_exclude ? p.ex_col.numel() : 0),
        n_keys_(n_keys) {
    if (rowptr_ != nullptr) {
      TORCH_CHECK(rowptr_[0] == 0 && rowptr_[n_queries] == nnz_,
                  "topk_scores: exclude rowptr must start at 0 and end at nnz = ", nnz_, ", got ",
                  rowptr_[0], " ... ", rowptr_[n_queries]);
    }
  }

  // Calls visit(id) for each valid key id excluded for `query`, in the CSR's order.
  template <typename F>
  void for_each(int64_t query, F&& visit) {
    if (rowptr_ == nullptr) return;
    const int64_t begin = rowptr_[query], end = rowptr_[query + 1];
    if (begin < 0 || begin > end || end > nnz_) {
      bad_rowptr_ = true;
      return;
    }
    for (int64_t e = begin; e < end; ++e) {
      const int64_t id = static_cast<int64_t>(col_[e]);
      if (id < 0 || id >= n_keys_) {
        bad_col_ = true;
        continue;
      }
      visit(id);
    }
  }

  // After the threads: the errors the rows showed.
  void raise_if_bad() const {
    TORCH_CHECK(!bad_rowptr_, "topk_scores: exclude rowptr must be non-decreasing (sorted CSR) "
                "and stay within [0, nnz = ", nnz_, "]");
    TORCH_CHECK(!bad_col_, "topk_scores: exclude holds key ids outside [0, ", n_keys_, ")");
  }

 private:
  const int64_t* rowptr_;
  const index_t* col_;
  int64_t nnz_, n_keys_;
  std::atomic<bool> bad_rowptr_{false}, bad_col_{false};
};

// ---------------------------------------------------------------------------- full rows
constexpr int64_t kRowKeys = 1 << 16;    // up to this many keys, the full-row path
constexpr int64_t kRowBlockBytes = 4 << 20;  // a block of score rows: at most 4 MiB (L3)
constexpr int64_t kMaxBucket = 64;       // at most this many scores per bucket maximum

// Maxima of disjoint buckets of `per` scores each (lane l of `per` consecutive vectors, then
// scalar buckets for the tail) written to out; returns how many. NaN never wins (v > m is
// false), so a bucket of NaN only has maximum -inf.
template <typename scalar_t>
MMFAST_SIMD_CLONES int64_t bucket_maxima(const scalar_t* s, int64_t n, int64_t per,
                                         scalar_t* out) {
  using V = simd::Vec<scalar_t>;
  constexpr int L = simd::kLanes<scalar_t>;
  constexpr scalar_t kLow = -std::numeric_limits<scalar_t>::infinity();
  int64_t m = 0, j = 0;
  for (; j + L * per <= n; j += L * per) {
    V mx = simd::splat<scalar_t>(kLow);
    for (int64_t r = 0; r < per; ++r) {
      const V v = simd::load(s + j + r * L);
      mx = v > mx ? v : mx;
    }
    for (int l = 0; l < L; ++l) out[m++] = mx[l];
  }
  for (; j < n; j += per) {
    scalar_t mx = kLow;
    for (int64_t e = j; e < std::min<int64_t>(n, j + per); ++e) mx = s[e] > mx ? s[e] : mx;
    out[m++] = mx;
  }
  return m;
}

// The k best of one score row (NaN never), in the contract's order, into values/indices with
// -inf / -1 padding. maxima: scratch of at least n + 1 entries (one bucket per score at worst).
template <typename scalar_t>
void select_row(const scalar_t* s, int64_t n, int64_t k, std::vector<scalar_t>& maxima,
                std::vector<typename Packed<scalar_t>::Item>& cand, scalar_t* values,
                int64_t* indices) {
  using P = Packed<scalar_t>;
  constexpr scalar_t kLow = -std::numeric_limits<scalar_t>::infinity();
  // About 2k buckets: few enough for a cheap nth_element, enough that the k-th largest
  // maximum sits near the row's k-th best (about 1.4 k candidates on a row in random order).
  const int64_t per = std::clamp<int64_t>(n / (2 * k), 1, kMaxBucket);
  const int64_t m = bucket_maxima(s, n, per, maxima.data());
  // The k-th largest maximum is a score that k scores reach (one per bucket); when fewer than
  // k buckets hold a non-NaN score it is -inf, and every non-NaN score is a candidate.
  scalar_t t = kLow;
  if (m >= k) {
    std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.begin() + m,
                     std::greater<scalar_t>());
    t = maxima[k - 1];
  }
  cand.clear();
  for (int64_t j = 0; (j = next_at_least(s, j, n, t)) < n; ++j) cand.push_back(P::make(s[j], j));
  const int64_t got = static_cast<int64_t>(cand.size());
  const int64_t keep = std::min(k, got);
  if (got > 3 * keep) {  // rare: a row whose best scores sit in few buckets
    std::nth_element(cand.begin(), cand.begin() + (keep - 1), cand.end(), P::better);
    std::sort(cand.begin(), cand.begin() + keep, P::better);
  } else {
    std::sort(cand.begin(), cand.end(), P::better);
  }
  for (int64_t i = 0; i < keep; ++i) {
    values[i] = P::score(cand[i]);
    indices[i] = P::index(cand[i]);
  }
  std::fill(values + keep, values + k, kLow);
  std::fill(indices + keep, indices + k, int64_t(-1));
}

template <typename scalar_t, typename index_t>
void topk_full_rows(const TopkProblem& p, at::Tensor& values, at::Tensor& indices) {
  const int64_t n_queries = p.queries.size(0), n_keys = p.keys.size(0), d = p.queries.size(1);
  const int64_t k = p.k;
  const int64_t row_bytes = std::max<int64_t>(1, n_keys) * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t block = std::clamp<int64_t>(kRowBlockBytes / row_bytes, 8, kQueryBlock);
  const int64_t n_blocks = (n_queries + block - 1) / block;
  const int64_t tile = key_tile(d, sizeof(scalar_t));
  ExcludeRows<index_t> exclude(p, n_queries, n_keys);
  scalar_t* out_values = values.data_ptr<scalar_t>();
  int64_t* out_indices = indices.data_ptr<int64_t>();
  std::atomic<int64_t> next_block{0};
  const int64_t workers = std::min<int64_t>(n_blocks, at::get_num_threads());
  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    at::Tensor scores = at::empty({block * n_keys}, p.queries.options());
    std::vector<scalar_t> maxima(n_keys + 1);
    std::vector<typename Packed<scalar_t>::Item> cand;
    cand.reserve(4 * k + 64);
    for (int64_t b = next_block++; b < n_blocks; b = next_block++) {
      const int64_t q0 = b * block;
      const int64_t nq = std::min(block, n_queries - q0);
      at::Tensor out = scores.narrow(0, 0, nq * n_keys).view({nq, n_keys});
      if (d > 0) {
        // One GEMM per tile of keys, written into its columns of the rows (BLAS takes the
        // row stride): the tile of keys stays in cache, as on the key-tile path.
        const at::Tensor q_block = p.queries.narrow(0, q0, nq);
        for (int64_t k0 = 0; k0 < n_keys; k0 += tile) {
          const int64_t nk = std::min(tile, n_keys - k0);
          at::Tensor part = out.narrow(1, k0, nk);
          at::mm_out(part, q_block, p.keys.narrow(0, k0, nk).t());
        }
      } else {
        out.zero_();
      }
      scalar_t* s = out.data_ptr<scalar_t>();
      for (int64_t r = 0; r < nq; ++r) {
        scalar_t* row = s + r * n_keys;
        exclude.for_each(q0 + r, [&](int64_t id) { row[id] = nan; });
        select_row(row, n_keys, k, maxima, cand, out_values + (q0 + r) * k,
                   out_indices + (q0 + r) * k);
      }
    }
  });
  exclude.raise_if_bad();
}

// ---------------------------------------------------------------------------- key tiles
template <typename scalar_t, typename index_t>
void topk_blocks(const TopkProblem& p, at::Tensor& values, at::Tensor& indices) {
  const int64_t n_queries = p.queries.size(0), n_keys = p.keys.size(0), d = p.queries.size(1);
  const int64_t k = p.k;
  TORCH_CHECK(n_keys <= 0xffffffffLL,
              "topk_scores: the CPU kernel takes at most 2^32 - 1 keys, got ", n_keys);
  const int64_t tile = key_tile(d, sizeof(scalar_t));
  const int64_t n_blocks = (n_queries + kQueryBlock - 1) / kQueryBlock;
  // Room for k plus a good share of new candidates between cuts.
  const int64_t cap = 2 * k + 64;
  ExcludeRows<index_t> exclude(p, n_queries, n_keys);
  scalar_t* out_values = values.data_ptr<scalar_t>();
  int64_t* out_indices = indices.data_ptr<int64_t>();

  // Threads take blocks from a shared counter rather than fixed ranges, so one thread that
  // the OS preempts (the CPU is shared) does not hold the rest up. A block's result does not
  // depend on which thread computes it.
  std::atomic<int64_t> next_block{0};
  const int64_t workers = std::min<int64_t>(n_blocks, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    std::vector<RunningTopk<scalar_t>> lists(kQueryBlock);
    std::vector<std::vector<int64_t>> excluded(kQueryBlock);  // sorted key ids per query
    std::vector<size_t> next_excluded(kQueryBlock);
    at::Tensor scores = at::empty({kQueryBlock * tile}, p.queries.options());

    for (int64_t b = next_block++; b < n_blocks; b = next_block++) {
      const int64_t q0 = b * kQueryBlock;
      const int64_t nq = std::min(kQueryBlock, n_queries - q0);
      for (int64_t r = 0; r < nq; ++r) {
        lists[r].reset(k, cap);
        excluded[r].clear();
        next_excluded[r] = 0;
        exclude.for_each(q0 + r, [&](int64_t id) { excluded[r].push_back(id); });
        std::sort(excluded[r].begin(), excluded[r].end());
      }
      const at::Tensor q_block = p.queries.narrow(0, q0, nq);
      for (int64_t k0 = 0; k0 < n_keys; k0 += tile) {
        const int64_t nk = std::min(tile, n_keys - k0);
        at::Tensor out = scores.narrow(0, 0, nq * nk).view({nq, nk});  // contiguous for BLAS
        if (d > 0) {
          at::mm_out(out, q_block, p.keys.narrow(0, k0, nk).t());
        } else {
          out.zero_();
        }
        const scalar_t* s = out.data_ptr<scalar_t>();
        for (int64_t r = 0; r < nq; ++r) {
          // Offer the runs of keys between consecutive excluded ids.
          const std::vector<int64_t>& ex = excluded[r];
          size_t& e = next_excluded[r];
          int64_t j = 0;
          while (j < nk) {
            while (e < ex.size() && ex[e] < k0 + j) ++e;  // also skips repeated ids
            const int64_t stop = (e < ex.size() && ex[e] < k0 + nk) ? ex[e] - k0 : nk;
            lists[r].offer(s + r * nk, j, stop, k0);
            j = stop + 1;
          }
        }
      }
      for (int64_t r = 0; r < nq; ++r)
        lists[r].write(out_values + (q0 + r) * k, out_indices + (q0 + r) * k);
    }
  });
  exclude.raise_if_bad();
}

void topk_kernel_cpu(const TopkProblem& p, at::Tensor& values, at::Tensor& indices) {
  const auto index_type = p.has_exclude ? p.ex_col.scalar_type() : at::kLong;
  AT_DISPATCH_FLOATING_TYPES(p.queries.scalar_type(), "mmfast_topk_scores_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(index_type, "mmfast_topk_scores_cpu", [&] {
      if (p.keys.size(0) <= kRowKeys) {
        topk_full_rows<scalar_t, index_t>(p, values, indices);
      } else {
        topk_blocks<scalar_t, index_t>(p, values, indices);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("topk_scores", &Bind<topk_scores_with, topk_kernel_cpu>::op);
}

}  // namespace mmfast
