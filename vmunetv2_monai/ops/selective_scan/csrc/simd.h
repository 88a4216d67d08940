// SIMD helpers shared by the CPU kernels (scan_cpu.cpp, cross_scan_cpu.cpp, gated_norm_cpu.cpp): 8-float vectors
// (AVX2+FMA intrinsics, or a portable fallback with the same interface), 16-float vectors where the build has
// AVX-512, 2^x, sigmoid, softplus and lane sums. Simd<W> gathers what a kernel written for either width needs; kWide
// is the widest width the build has.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VMU_AVX2 1
#else
#define VMU_AVX2 0
#endif
#if VMU_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
#define VMU_AVX512 1
#else
#define VMU_AVX512 0
#endif

// Unroll a loop over the state index fully, so that per-state vectors stay in registers (GCC and clang leave a
// 16-iteration loop with a large body rolled, and its arrays then live on the stack).
#if defined(__clang__)
#define VMU_UNROLL_STATES _Pragma("unroll")
#elif defined(__GNUC__)
#define VMU_UNROLL_STATES _Pragma("GCC unroll 32")
#else
#define VMU_UNROLL_STATES
#endif

namespace vmu {

constexpr int64_t kChunk = 64;  // time steps per chunk (a multiple of 16): the state is saved at chunk starts

// 2^f on [-1/2, 1/2] (AVX2 and portable builds, after rounding to nearest) and on [0, 1) (AVX-512, after
// flooring), highest power first: degree-5 near-minimax fits of the relative error, at most 1.7e-7 and 1.5e-7 in
// float arithmetic with FMA, about one rounding of the argument x = dl * A log2 e itself (|x| * 6e-8 * ln 2).
constexpr float kExp2Poly[] = {1.326472731e-03f, 9.671512991e-03f, 5.550733581e-02f, 2.402224243e-01f,
                               6.931470037e-01f, 1.0f};
constexpr float kExp2PolyUnit[] = {1.867130515e-03f, 9.017029777e-03f, 5.579991266e-02f, 2.401644439e-01f,
                                   6.931512952e-01f, 1.0f};
constexpr int kExp2Terms = sizeof(kExp2Poly) / sizeof(kExp2Poly[0]);  // from the list: no zero-filled tail
static_assert(sizeof(kExp2PolyUnit) == sizeof(kExp2Poly), "both fits have the same degree");

#if VMU_AVX2
using vec = __m256;
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vset1(float x) { return _mm256_set1_ps(x); }
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }

// 2^x for 8 lanes: x = n + f with |f| <= 1/2, n = round(x) read off the low mantissa bits of x + kShift (the
// addition rounds to nearest), 2^f by the polynomial kExp2Poly, 2^n written into the exponent bits. x is clamped
// to [-126, 127]: 2^-126 stands in for underflow.
constexpr float kShift = 12582912.0f + 127.0f;  // 1.5 * 2^23 + the exponent bias: x + kShift holds n + 127
inline vec vexp2(vec x) {
  x = _mm256_max_ps(_mm256_min_ps(x, vset1(127.0f)), vset1(-126.0f));
  const vec t = _mm256_add_ps(x, vset1(kShift));
  const vec f = _mm256_sub_ps(x, _mm256_sub_ps(t, vset1(kShift)));
  vec p = vset1(kExp2Poly[0]);
  for (int k = 1; k < kExp2Terms; ++k) p = vfma(p, f, vset1(kExp2Poly[k]));
  return vmul(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}
// a / b for finite b away from 0 (vsoftplus's denominators, in [1, 3]); the AVX-512 build takes a reciprocal
// estimate there, these builds divide.
inline vec vdiv_bounded(vec a, vec b) { return _mm256_div_ps(a, b); }
inline vec vabs(vec a) { return _mm256_andnot_ps(vset1(-0.0f), a); }
inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
// where(x >= 0, a, b)
inline vec vselect_nonneg(vec x, vec a, vec b) { return _mm256_blendv_ps(a, b, _mm256_cmp_ps(x, vzero(), _CMP_LT_OQ)); }

// Lane i of the result is the sum of the 8 lanes of v[i].
inline vec hsum8x8(const vec* v) {
  const vec a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
  const vec c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
  const vec ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  return vadd(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// The first `count` lanes of a vector (count <= 8): full vectors load and store plainly, the last partial one masked.
struct Lanes {
  int count;
  __m256i mask;
};
inline Lanes lanes(int count) {
  return {count, _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
}
inline vec vload_n(const float* p, const Lanes& m) { return m.count == 8 ? vload(p) : _mm256_maskload_ps(p, m.mask); }
inline void vstore_n(float* p, vec v, const Lanes& m) {
  if (m.count == 8) {
    vstore(p, v);
  } else {
    _mm256_maskstore_ps(p, m.mask, v);
  }
}
#else
// Portable fallback with the same interface: 8 floats, loops the compiler may vectorise.
struct vec {
  float v[8];
};
inline vec vload(const float* p) {
  vec r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore(float* p, vec a) {
  for (int i = 0; i < 8; ++i) p[i] = a.v[i];
}
inline vec vset1(float x) {
  vec r;
  for (int i = 0; i < 8; ++i) r.v[i] = x;
  return r;
}
inline vec vzero() { return vset1(0.0f); }
inline vec vadd(vec a, vec b) {
  for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
  return a;
}
inline vec vmul(vec a, vec b) {
  for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
  return a;
}
inline vec vfma(vec a, vec b, vec c) {
  for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
inline vec vexp2(vec x) {
  for (int i = 0; i < 8; ++i) x.v[i] = std::exp2(x.v[i]);
  return x;
}
inline vec vdiv_bounded(vec a, vec b) {
  for (int i = 0; i < 8; ++i) a.v[i] /= b.v[i];
  return a;
}
inline vec vabs(vec a) {
  for (int i = 0; i < 8; ++i) a.v[i] = std::fabs(a.v[i]);
  return a;
}
inline vec vmax(vec a, vec b) {
  for (int i = 0; i < 8; ++i) a.v[i] = std::max(a.v[i], b.v[i]);
  return a;
}
inline vec vselect_nonneg(vec x, vec a, vec b) {
  for (int i = 0; i < 8; ++i) a.v[i] = x.v[i] >= 0.0f ? a.v[i] : b.v[i];
  return a;
}
struct Lanes {
  int count;
};
inline Lanes lanes(int count) { return {count}; }
inline vec vload_n(const float* p, const Lanes& m) {
  vec r = vzero();
  for (int i = 0; i < m.count; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore_n(float* p, vec a, const Lanes& m) {
  for (int i = 0; i < m.count; ++i) p[i] = a.v[i];
}
inline vec hsum8x8(const vec* v) {
  vec r;
  for (int i = 0; i < 8; ++i) {
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += v[i].v[j];
    r.v[i] = s;
  }
  return r;
}
#endif

#if VMU_AVX512
// 16-float vectors: the same operations on __m512 (overloads), and masked partial vectors.
inline void vstore(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline __m512 vadd(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
inline __m512 vmul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
inline __m512 vfma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
// a / b by rcp14 and one Newton step (relative error about 2^-28 before the last rounding), not a divide: finite b
// away from 0 only, as vsoftplus's denominators (in [1, 3]) are.
inline __m512 vdiv_bounded(__m512 a, __m512 b) {
  const __m512 r = _mm512_rcp14_ps(b);
  return _mm512_mul_ps(a, _mm512_mul_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(2.0f))));
}
inline __m512 vabs(__m512 a) { return _mm512_abs_ps(a); }
inline __m512 vmax(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
inline __m512 vselect_nonneg(__m512 x, __m512 a, __m512 b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), a, b);
}
// 2^x for 16 lanes: f = x - floor(x) in one reduce, 2^f by kExp2PolyUnit, then scalef multiplies by 2^floor(x)
// (it floors its second operand itself), saturating to 0 and inf by itself (no clamp needed).
inline __m512 vexp2(__m512 x) {
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(kExp2PolyUnit[0]);
  for (int k = 1; k < kExp2Terms; ++k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2PolyUnit[k]));
  return _mm512_scalef_ps(p, x);
}
struct Lanes16 {
  __mmask16 bits;
};
inline void vstore_n(float* p, __m512 v, const Lanes16& m) { _mm512_mask_storeu_ps(p, m.bits, v); }
#endif

// W floats a vector, for kernels written for either width: Simd<8> (AVX2, or the portable fallback) and, where the
// build has AVX-512, Simd<16>. Arithmetic is the overloaded free functions above.
template <int W>
struct Simd;

template <>
struct Simd<8> {
  using V = vec;
  using Mask = Lanes;
  static V load(const float* p) { return vload(p); }
  static V set1(float x) { return vset1(x); }
  static V zero() { return vzero(); }
  static Mask mask(int count) { return lanes(count); }
  static V load_n(const float* p, const Mask& m) { return vload_n(p, m); }
  // lane i of the result = the sum of the lanes of v[i], for 8 vectors
  static vec sum8(const V* v) { return hsum8x8(v); }
  // out[i] = the sum of the lanes of vector i of rows, for 8 consecutive vectors
  static void sum_rows8(const float* rows, float* out) {
    V v[8];
    for (int i = 0; i < 8; ++i) v[i] = load(rows + 8 * i);
    vstore(out, sum8(v));
  }
};

#if VMU_AVX512
template <>
struct Simd<16> {
  using V = __m512;
  using Mask = Lanes16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static Mask mask(int count) { return {static_cast<__mmask16>((1u << count) - 1u)}; }
  static V load_n(const float* p, const Mask& m) { return _mm512_maskz_loadu_ps(m.bits, p); }
  // lane i of the result = the sum of the 16 lanes of v[i], for 8 vectors, from registers: pairs of vectors are
  // interleaved and added (4 lanes of each in every 128-bit block, then one lane), then the blocks are added.
  static vec sum8(const V* v) {
    V t[4], u[2];
    for (int j = 0; j < 4; ++j) {
      t[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
    }
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[2 * j]), b = _mm512_castps_pd(t[2 * j + 1]);
      u[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // block k of u[j]: the partial sums of v[4 j .. 4 j + 3] over lanes 4 k .. 4 k + 3
    const V x = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const vec lo = _mm512_castps512_ps256(x), hi = _mm512_extractf32x8_ps(x, 1);
    return vadd(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
  }
};
constexpr int kWide = 16;  // the widest vector this build has, in floats
#else
constexpr int kWide = 8;
#endif

inline float hsum(const float* row) {
  float s = 0.0f;
  for (int j = 0; j < 8; ++j) s += row[j];
  return s;
}

// exp(-|x|), any width: in (0, 1], the term both sigmoid and softplus are formed from.
template <typename V>
V vexp_neg_abs(V x) {
  using S = Simd<sizeof(V) / sizeof(float)>;
  return vexp2(vmul(vabs(x), S::set1(-1.44269504088896341f)));
}

// sigmoid(x) given w = exp(-|x|): 1 / (1 + w) for x >= 0, w / (1 + w) below (denominators in [1, 2]).
template <typename V>
V vsigmoid_of(V x, V w) {
  using S = Simd<sizeof(V) / sizeof(float)>;
  const V one = S::set1(1.0f);
  return vdiv_bounded(vselect_nonneg(x, one, w), vadd(one, w));
}

template <typename V>
V vsigmoid(V x) {
  return vsigmoid_of(x, vexp_neg_abs(x));
}

// softplus(x) and its derivative sigmoid(x), any width: softplus(x) = max(x, 0) + log1p(w) with w = exp(-|x|) and
// log1p(w) = 2 atanh(s), s = w / (2 + w) <= 1/3 (odd series to s^13).
// sigmoid may be null (forward needs only softplus).
template <typename V>
V vsoftplus(V x, V* sigmoid) {
  using S = Simd<sizeof(V) / sizeof(float)>;
  const V w = vexp_neg_abs(x);
  const V s = vdiv_bounded(w, vadd(w, S::set1(2.0f)));
  const V s2 = vmul(s, s);
  V p = S::set1(1.0f / 13.0f);
  for (float k : {11.0f, 9.0f, 7.0f, 5.0f, 3.0f, 1.0f}) p = vfma(p, s2, S::set1(1.0f / k));
  if (sigmoid != nullptr) *sigmoid = vsigmoid_of(x, w);
  return vadd(vmax(x, S::zero()), vmul(vadd(s, s), p));
}

// f(std::integral_constant<int, N / 8>) for N in {8, 16, 24, 32}: the number of 8-float vectors a state needs.
template <typename F>
void dispatch_nv(int64_t N, F&& f) {
  switch (N / 8) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace vmu
