// SIMD helpers shared by the CPU scan kernels (scan_cpu.cpp, cross_scan_cpu.cpp): 8-float vectors (AVX2+FMA
// intrinsics, or a portable fallback with the same interface), 2^x, softplus and lane sums.
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

namespace vmu {

constexpr int64_t kChunk = 64;  // time steps per chunk (a multiple of 8): the state is saved at chunk starts

#if VMU_AVX2
using vec = __m256;
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vset1(float x) { return _mm256_set1_ps(x); }
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }

// 2^x for 8 lanes: x = n + f with |f| <= 1/2, 2^f = exp(f ln2) by a degree-7 Taylor polynomial (relative error
// below 1e-7), 2^n written into the exponent bits. x is clamped to [-126, 127]: 2^-126 stands in for underflow.
inline vec vexp2(vec x) {
  x = _mm256_max_ps(_mm256_min_ps(x, vset1(127.0f)), vset1(-126.0f));
  const vec n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vec f = _mm256_sub_ps(x, n);
  vec p = vset1(1.5252733804059841e-05f);  // ln2^k / k!, k = 7 .. 0
  p = vfma(p, f, vset1(1.5403530393381606e-04f));
  p = vfma(p, f, vset1(1.3333558146428443e-03f));
  p = vfma(p, f, vset1(9.6181291076284770e-03f));
  p = vfma(p, f, vset1(5.5504108664821580e-02f));
  p = vfma(p, f, vset1(2.4022650695910072e-01f));
  p = vfma(p, f, vset1(6.9314718055994531e-01f));
  p = vfma(p, f, vset1(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return vmul(p, _mm256_castsi256_ps(e));
}
inline vec vdiv(vec a, vec b) { return _mm256_div_ps(a, b); }
inline vec vabs(vec a) { return _mm256_andnot_ps(vset1(-0.0f), a); }
inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
// where(x >= 0, a, b)
inline vec vselect_nonneg(vec x, vec a, vec b) { return _mm256_blendv_ps(a, b, _mm256_cmp_ps(x, vzero(), _CMP_LT_OQ)); }

// Lane i of the result is the sum of the 8 lanes of rows[i] (rows: 8 consecutive vectors of 8 floats).
inline vec hsum8x8(const float* rows) {
  const vec a = _mm256_hadd_ps(vload(rows), vload(rows + 8));
  const vec b = _mm256_hadd_ps(vload(rows + 16), vload(rows + 24));
  const vec c = _mm256_hadd_ps(vload(rows + 32), vload(rows + 40));
  const vec d = _mm256_hadd_ps(vload(rows + 48), vload(rows + 56));
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
inline vec vdiv(vec a, vec b) {
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
inline vec hsum8x8(const float* rows) {
  vec r;
  for (int i = 0; i < 8; ++i) {
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += rows[8 * i + j];
    r.v[i] = s;
  }
  return r;
}
#endif

inline float hsum(const float* row) {
  float s = 0.0f;
  for (int j = 0; j < 8; ++j) s += row[j];
  return s;
}

// softplus(x) and its derivative sigmoid(x), 8 lanes: softplus(x) = max(x, 0) + log1p(w) with w = exp(-|x|) and
// log1p(w) = 2 atanh(s), s = w / (2 + w) <= 1/3 (odd series to s^13).
// sigmoid may be null (forward needs only softplus).
inline vec vsoftplus(vec x, vec* sigmoid) {
  const vec w = vexp2(vmul(vabs(x), vset1(-1.44269504088896341f)));
  const vec s = vdiv(w, vadd(w, vset1(2.0f)));
  const vec s2 = vmul(s, s);
  vec p = vset1(1.0f / 13.0f);
  for (float k : {11.0f, 9.0f, 7.0f, 5.0f, 3.0f, 1.0f}) p = vfma(p, s2, vset1(1.0f / k));
  const vec one = vset1(1.0f);
  if (sigmoid != nullptr) *sigmoid = vdiv(vselect_nonneg(x, one, w), vadd(one, w));
  return vadd(vmax(x, vzero()), vmul(vadd(s, s), p));
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
