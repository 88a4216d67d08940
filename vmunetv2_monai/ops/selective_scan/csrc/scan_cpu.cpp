// Selective scan on the CPU: forward and backward of the S6 recurrence (the ``cpu`` backend).
//
//   h_t = exp(dl_t * A) * h_{t-1} + dl_t * u_t * B_t,    y_t = <C_t, h_t> + D * u_t
//
//   dl_t = softplus(delta_t + bias) (or delta_t + bias)
//
// Layouts (all float32, contiguous): u, delta, y (batch, G, P, L); A (G, P, N); Bm, Cm time-major
// (batch, G, L, N); D, bias (G, P) or empty. N must be a multiple of 8 (8 lanes of one AVX2 register), <= 32.
//
// The fused SS2D op (cross_scan_forward / cross_scan_backward, the ``cpu_fused`` path) runs the same recurrence for
// the G = 4 cross-scan directions of a channels-last map u (batch, H, W, P): each chunk's u (and dy) is gathered in
// the direction's order, y (and du) scattered back and summed over the directions (the cross-merge), and the raw
// step sizes are the low-rank product dtw[g] @ dts[:, g] formed per chunk, so that neither the four orders of u
// nor the (batch, 4, P, L) step sizes are materialised in forward. One task runs all four directions of its
// channels one after the other, so the merge needs no atomics.
//
// Work is split into tasks of consecutive channels of one (batch, group); inside a task the time axis is cut
// into blocks of kBlockChunks * kChunk steps and every channel of the task runs through a block before the next
// block starts, so the block's B and C (and, in backward, dB and dC) stay in L2 while u, delta and y stream.
// The state of one channel lives in NV registers. Forward optionally saves the state at every chunk start; backward recomputes a chunk's states
// from it and runs the adjoint recurrence backwards, so no per-step state of the whole sequence is stored.
// exp is 2^x by range reduction plus a degree-7 polynomial (relative error near float32 rounding); softplus and
// its derivative are vectorised over time too.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VMU_AVX2 1
#else
#define VMU_AVX2 0
#endif

namespace {

constexpr int64_t kChunk = 64;       // time steps per chunk (a multiple of 8): the state is saved at chunk starts
constexpr int64_t kBlockChunks = 8;  // chunks per time block: a block's B and C (and dB, dC) stay in L2

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

// out[t] = sum of the 8 floats of rows[t] for t < count (rows: count x 8 floats, out: count floats).
inline void reduce_rows(const float* rows, int64_t count, float* out) {
  int64_t t = 0;
  for (; t + 8 <= count; t += 8) vstore(out + t, hsum8x8(rows + 8 * t));
  for (; t < count; ++t) out[t] = hsum(rows + 8 * t);
}

struct Dims {
  int64_t batch, groups, P, L, N, chunks;
};

// Channels [p0, p1) per task, split so that there are a few tasks per thread; ``units`` are the independent
// (batch, group) pairs the tasks are also spread over (batch * groups, or batch when one task runs every group).
struct Split {
  int64_t per_group, width;
  Split(const Dims& d, int64_t min_width, int64_t units) {
    const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads()) / std::max<int64_t>(1, units));
    per_group = std::max<int64_t>(1, std::min<int64_t>(want, d.P / std::max<int64_t>(1, min_width)));
    width = (d.P + per_group - 1) / per_group;
    per_group = (d.P + width - 1) / width;
  }
};

// Per-channel inputs of the recurrence; D, bias may be null (no skip, zero bias). The raw step sizes are delta's
// rows (batch, G, P, L), or, for the fused cross-scan (dts != nullptr), the low-rank product
// dtw[g, p, :] . dts[b, g, :, t] with dts (batch, G, R, L) and dtw (G, P, R).
struct Inputs {
  const float *u, *delta, *A, *Bm, *Cm, *D, *bias, *dts, *dtw;
  int64_t R;
  bool softplus;
};

// The raw step sizes of steps [t0, t0 + count) of channel p of (b, g): a pointer into delta, or buf filled with
// the low-rank product (fused cross-scan).
inline const float* raw_steps(const Dims& d, const Inputs& in, int64_t b, int64_t g, int64_t p, int64_t t0,
                              int64_t count, float* buf) {
  if (in.dts == nullptr) return in.delta + ((b * d.groups + g) * d.P + p) * d.L + t0;
  const float* w = in.dtw + (g * d.P + p) * in.R;
  const float* x = in.dts + (b * d.groups + g) * in.R * d.L + t0;
  std::fill(buf, buf + count, 0.0f);
  for (int64_t r = 0; r < in.R; ++r) {
    const float wr = w[r];
    const float* xr = x + r * d.L;
    for (int64_t i = 0; i < count; ++i) buf[i] += wr * xr[i];
  }
  return buf;
}

// Where a row's u, y (and dy, du) live. Plain scan: its own row of (batch, G, P, L) in time order (pos == nullptr).
// Fused cross-scan (SS2D): the channels-last map (batch, L, P) shared by the G = 4 directions; step t of direction
// g is spatial position pos[t] (pos = the direction's L positions). u and dy are gathered from the map; y and du
// are scattered into it, written by the first direction and added by the others (the cross-merge).
struct Spatial {
  const int32_t* pos;
  bool first;
};

// v[i] = map[pos[i] * stride] for i < count.
inline void gather(const float* map, const int32_t* pos, int64_t count, int64_t stride, float* v) {
  for (int64_t i = 0; i < count; ++i) v[i] = map[pos[i] * stride];
}

// map[pos[i] * stride] = v[i] (first) or += v[i], for i < count.
inline void scatter(const float* v, const int32_t* pos, int64_t count, int64_t stride, bool first, float* map) {
  if (first) {
    for (int64_t i = 0; i < count; ++i) map[pos[i] * stride] = v[i];
  } else {
    for (int64_t i = 0; i < count; ++i) map[pos[i] * stride] += v[i];
  }
}

// dl[i] = softplus(delta[i] + bias) (or delta[i] + bias) and sg[i] = d dl / d delta, for i < count <= kChunk.
inline void step_sizes(const float* delta, int64_t count, float bias, bool softplus, float* dl, float* sg) {
  alignas(32) float x[kChunk];
  for (int64_t i = 0; i < count; ++i) x[i] = delta[i] + bias;
  if (!softplus) {
    std::copy(x, x + count, dl);
    std::fill(sg, sg + count, 1.0f);
    return;
  }
  for (int64_t i = count; i < (count + 7) / 8 * 8; ++i) x[i] = 0.0f;
  for (int64_t i = 0; i < count; i += 8) {
    // softplus(x) = max(x, 0) + log1p(w), w = exp(-|x|); log1p(w) = 2 atanh(s), s = w / (2 + w) <= 1/3.
    const vec xv = vload(x + i);
    const vec w = vexp2(vmul(vabs(xv), vset1(-1.44269504088896341f)));
    const vec s = vdiv(w, vadd(w, vset1(2.0f)));
    const vec s2 = vmul(s, s);
    vec p = vset1(1.0f / 13.0f);
    for (float k : {11.0f, 9.0f, 7.0f, 5.0f, 3.0f, 1.0f}) p = vfma(p, s2, vset1(1.0f / k));
    const vec one = vset1(1.0f);
    alignas(32) float a[8], b[8];
    vstore(a, vadd(vmax(xv, vzero()), vmul(vadd(s, s), p)));
    vstore(b, vdiv(vselect_nonneg(xv, one, w), vadd(one, w)));  // sigmoid(x)
    for (int64_t j = 0; j < 8 && i + j < count; ++j) {
      dl[i + j] = a[j];
      sg[i + j] = b[j];
    }
  }
}

template <int NV>
void forward_task(const Dims& d, int64_t b, int64_t g, int64_t p0, int64_t p1, const Inputs& in, float* y,
                  float* hsave, const Spatial& sp) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = d.L;
  const float* bg = in.Bm + (b * d.groups + g) * L * N;
  const float* cg = in.Cm + (b * d.groups + g) * L * N;
  std::vector<float> state((p1 - p0) * N, 0.0f);
  alignas(32) float acc[kChunk * 8], dl[kChunk], sg[kChunk], ubuf[kChunk], ybuf[kChunk], dbuf[kChunk];
  for (int64_t c0 = 0; c0 < d.chunks; c0 += kBlockChunks) {
    const int64_t c1 = std::min(d.chunks, c0 + kBlockChunks);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk), len = t1 - t0;
        const int64_t row = (b * d.groups + g) * d.P + p, ch = g * d.P + p, smap = b * L * d.P + p;
        const float* ur = in.u + row * L + t0;
        if (sp.pos != nullptr) {
          gather(in.u + smap, sp.pos + t0, len, d.P, ubuf);
          ur = ubuf;
        }
        step_sizes(raw_steps(d, in, b, g, p, t0, len, dbuf), len, in.bias ? in.bias[ch] : 0.0f, in.softplus, dl, sg);
        float* hs = state.data() + (p - p0) * N;
        vec h[NV], a2[NV];
        for (int j = 0; j < NV; ++j) {
          h[j] = vload(hs + 8 * j);
          a2[j] = vmul(vload(in.A + ch * N + 8 * j), vset1(1.44269504088896341f));
        }
        if (hsave != nullptr) {
          float* dst = hsave + (row * d.chunks + c) * N;
          for (int j = 0; j < NV; ++j) vstore(dst + 8 * j, h[j]);
        }
        for (int64_t i = 0; i < len; ++i) {
          const vec dt = vset1(dl[i]), dtu = vset1(dl[i] * ur[i]);
          const float* bt = bg + (t0 + i) * N;
          const float* ct = cg + (t0 + i) * N;
          vec yv = vzero();
          for (int j = 0; j < NV; ++j) {
            h[j] = vfma(vexp2(vmul(dt, a2[j])), h[j], vmul(dtu, vload(bt + 8 * j)));
            yv = vfma(h[j], vload(ct + 8 * j), yv);
          }
          vstore(acc + 8 * i, yv);
        }
        for (int j = 0; j < NV; ++j) vstore(hs + 8 * j, h[j]);
        float* yr = sp.pos != nullptr ? ybuf : y + row * L + t0;
        reduce_rows(acc, len, yr);
        if (in.D != nullptr) {
          const float dp = in.D[ch];
          for (int64_t i = 0; i < len; ++i) yr[i] += dp * ur[i];
        }
        if (sp.pos != nullptr) scatter(ybuf, sp.pos + t0, len, d.P, sp.first, y + smap);
      }
    }
  }
}

// Gradients of one task's channels; dBp/dCp are this task's partial sums (reduced over tasks by the caller),
// dA, dD, dbias per row (reduced over the batch by the caller).
struct Grads {
  float *du, *ddelta, *dA, *dBp, *dCp, *dD, *dbias;
};

template <int NV>
void backward_task(const Dims& d, int64_t b, int64_t g, int64_t s, int64_t p0, int64_t p1, int64_t per_group,
                   const Inputs& in, const float* hsave, const float* dy, const Grads& out, const Spatial& sp) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = d.L;
  const float* bg = in.Bm + (b * d.groups + g) * L * N;
  const float* cg = in.Cm + (b * d.groups + g) * L * N;
  float* dbg = out.dBp + ((b * d.groups + g) * per_group + s) * L * N;
  float* dcg = out.dCp + ((b * d.groups + g) * per_group + s) * L * N;
  std::vector<float> carry((p1 - p0) * N, 0.0f);
  std::vector<float> hloc(kChunk * N), eloc(kChunk * N), dbloc(kBlockChunks * kChunk * N), dcloc(dbloc.size());
  alignas(32) float qrows[kChunk * 8], grows[kChunk * 8], qsum[kChunk], gsum[kChunk], dl[kChunk], sg[kChunk];
  alignas(32) float ubuf[kChunk], gybuf[kChunk], dubuf[kChunk], dbuf[kChunk];
  for (int64_t c1 = d.chunks; c1 > 0; c1 -= kBlockChunks) {
    const int64_t c0 = std::max<int64_t>(0, c1 - kBlockChunks);
    const int64_t bt0 = c0 * kChunk, bt1 = std::min(L, c1 * kChunk);
    std::fill(dbloc.begin(), dbloc.end(), 0.0f);
    std::fill(dcloc.begin(), dcloc.end(), 0.0f);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t c = c1 - 1; c >= c0; --c) {
        const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk), len = t1 - t0;
        const int64_t row = (b * d.groups + g) * d.P + p, ch = g * d.P + p, smap = b * L * d.P + p;
        const float* ur = in.u + row * L + t0;
        const float* gy = dy + row * L + t0;
        if (sp.pos != nullptr) {
          gather(in.u + smap, sp.pos + t0, len, d.P, ubuf);
          gather(dy + smap, sp.pos + t0, len, d.P, gybuf);
          ur = ubuf;
          gy = gybuf;
        }
        const float* h0 = hsave + (row * d.chunks + c) * N;
        step_sizes(raw_steps(d, in, b, g, p, t0, len, dbuf), len, in.bias ? in.bias[ch] : 0.0f, in.softplus, dl, sg);
        vec a[NV], a2[NV], h[NV];
        for (int j = 0; j < NV; ++j) {
          a[j] = vload(in.A + ch * N + 8 * j);
          a2[j] = vmul(a[j], vset1(1.44269504088896341f));
          h[j] = vload(h0 + 8 * j);
        }
        // Recompute the chunk's decays and states from the saved chunk-start state.
        for (int64_t i = 0; i < len; ++i) {
          const vec dt = vset1(dl[i]), dtu = vset1(dl[i] * ur[i]);
          const float* bt = bg + (t0 + i) * N;
          for (int j = 0; j < NV; ++j) {
            const vec e = vexp2(vmul(dt, a2[j]));
            h[j] = vfma(e, h[j], vmul(dtu, vload(bt + 8 * j)));
            vstore(eloc.data() + i * N + 8 * j, e);
            vstore(hloc.data() + i * N + 8 * j, h[j]);
          }
        }
        // Adjoint recurrence backwards: gs_t = dy_t C_t + exp(dl_{t+1} A) gs_{t+1}.
        float* cs = carry.data() + (p - p0) * N;
        vec gs[NV], dav[NV];
        for (int j = 0; j < NV; ++j) {
          gs[j] = vload(cs + 8 * j);
          dav[j] = vzero();
        }
        for (int64_t i = len - 1; i >= 0; --i) {
          const vec gyt = vset1(gy[i]), dt = vset1(dl[i]), ut = vset1(ur[i]), dtu = vset1(dl[i] * ur[i]);
          const float* bt = bg + (t0 + i) * N;
          const float* ct = cg + (t0 + i) * N;
          const float* hp = i > 0 ? hloc.data() + (i - 1) * N : h0;
          vec q = vzero(), gb = vzero();
          for (int j = 0; j < NV; ++j) {
            const vec e = vload(eloc.data() + i * N + 8 * j);
            const vec gj = vfma(gyt, vload(ct + 8 * j), gs[j]);
            const vec x = vmul(vmul(gj, vload(hp + 8 * j)), e);  // gradient w.r.t. dl_t * A
            dav[j] = vfma(x, dt, dav[j]);
            const vec gbj = vmul(gj, vload(bt + 8 * j));
            gb = vadd(gb, gbj);
            q = vfma(x, a[j], vfma(ut, gbj, q));
            float* dbt = dbloc.data() + (t0 - bt0 + i) * N + 8 * j;
            vstore(dbt, vfma(gj, dtu, vload(dbt)));
            float* dct = dcloc.data() + (t0 - bt0 + i) * N + 8 * j;
            vstore(dct, vfma(gyt, vload(hloc.data() + i * N + 8 * j), vload(dct)));
            gs[j] = vmul(gj, e);
          }
          vstore(qrows + 8 * i, q);
          vstore(grows + 8 * i, gb);
        }
        float* dar = out.dA + row * N;
        for (int j = 0; j < NV; ++j) {
          vstore(cs + 8 * j, gs[j]);
          vstore(dar + 8 * j, vadd(vload(dar + 8 * j), dav[j]));
        }
        reduce_rows(qrows, len, qsum);
        reduce_rows(grows, len, gsum);
        const float dp = in.D != nullptr ? in.D[ch] : 0.0f;
        float dd = 0.0f, db = 0.0f;
        float* dur = sp.pos != nullptr ? dubuf : out.du + row * L + t0;
        float* ddr = out.ddelta + row * L + t0;
        for (int64_t i = 0; i < len; ++i) {
          dur[i] = dl[i] * gsum[i] + dp * gy[i];
          ddr[i] = qsum[i] * sg[i];
          db += ddr[i];
          dd += gy[i] * ur[i];
        }
        if (sp.pos != nullptr) scatter(dubuf, sp.pos + t0, len, d.P, sp.first, out.du + smap);
        out.dD[row] += dd;
        out.dbias[row] += db;
      }
    }
    std::copy(dbloc.begin(), dbloc.begin() + (bt1 - bt0) * N, dbg + bt0 * N);
    std::copy(dcloc.begin(), dcloc.begin() + (bt1 - bt0) * N, dcg + bt0 * N);
  }
}

void check_floats(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && !t->is_cuda(),
                "all inputs must be contiguous float32 CPU tensors");
  }
}

// The shapes shared by both ops: A (G, P, N), B and C (batch, G, L, N), D and bias (G, P) or empty.
void check_common(const Dims& d, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                  const at::Tensor& bias) {
  TORCH_CHECK(d.N % 8 == 0 && d.N <= 32, "the cpu scan kernel needs N in {8, 16, 24, 32}, got ", d.N);
  check_floats({&A, &Bm, &Cm, &D, &bias});
  TORCH_CHECK(A.dim() == 3 && A.size(0) == d.groups && A.size(1) == d.P, "A must be (G, P, N)");
  TORCH_CHECK(Bm.dim() == 4 && Bm.size(0) == d.batch && Bm.size(1) == d.groups && Bm.size(2) == d.L &&
                  Bm.size(3) == d.N && Cm.sizes() == Bm.sizes(),
              "B and C must be time-major (batch, G, L, N)");
  TORCH_CHECK(D.numel() == 0 || D.numel() == d.groups * d.P, "D must be empty or (G, P)");
  TORCH_CHECK(bias.numel() == 0 || bias.numel() == d.groups * d.P, "delta_bias must be empty or (G, P)");
}

// Plain scan: u, delta (batch, G, P, L).
Dims check_plain(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                 const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& bias) {
  check_floats({&u, &delta});
  TORCH_CHECK(u.dim() == 4 && delta.sizes() == u.sizes() && A.dim() == 3, "u and delta must be (batch, G, P, L)");
  const Dims d{u.size(0), u.size(1), u.size(2), u.size(3), A.size(2), (u.size(3) + kChunk - 1) / kChunk};
  check_common(d, A, Bm, Cm, D, bias);
  return d;
}

// Fused cross-scan: u (batch, H, W, P), dts (batch, 4, R, H * W), dtw (4, P, R).
Dims check_cross(const at::Tensor& u, const at::Tensor& dts, const at::Tensor& dtw, const at::Tensor& A,
                 const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& bias) {
  check_floats({&u, &dts, &dtw});
  TORCH_CHECK(u.dim() == 4 && A.dim() == 3, "u must be channels-last (batch, H, W, P)");
  const int64_t L = u.size(1) * u.size(2);
  const Dims d{u.size(0), 4, u.size(3), L, A.size(2), (L + kChunk - 1) / kChunk};
  TORCH_CHECK(dts.dim() == 4 && dts.size(0) == d.batch && dts.size(1) == 4 && dts.size(3) == L,
              "dts must be (batch, 4, R, H * W)");
  TORCH_CHECK(dtw.dim() == 3 && dtw.size(0) == 4 && dtw.size(1) == d.P && dtw.size(2) == dts.size(2),
              "dt_projs_weight must be (4, P, R)");
  check_common(d, A, Bm, Cm, D, bias);
  return d;
}

Inputs inputs(const at::Tensor& u, const float* delta, const float* dts, const float* dtw, int64_t R,
              const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
              const at::Tensor& bias, bool softplus) {
  return {u.data_ptr<float>(),
          delta,
          A.data_ptr<float>(),
          Bm.data_ptr<float>(),
          Cm.data_ptr<float>(),
          D.numel() ? D.data_ptr<float>() : nullptr,
          bias.numel() ? bias.data_ptr<float>() : nullptr,
          dts,
          dtw,
          R,
          softplus};
}

// The row-major positions h * W + w visited at steps t = 0 .. L - 1 by the four cross-scan directions, 4 x L:
// row-major, column-major, and the two reversed (as ops/cross_scan.py).
std::vector<int32_t> cross_scan_positions(int64_t H, int64_t W) {
  const int64_t L = H * W;
  std::vector<int32_t> pos(4 * L);
  for (int64_t t = 0; t < L; ++t) {
    pos[t] = static_cast<int32_t>(t);
    pos[L + t] = static_cast<int32_t>((t % H) * W + t / H);
  }
  for (int64_t t = 0; t < L; ++t) {
    pos[2 * L + t] = pos[L - 1 - t];
    pos[3 * L + t] = pos[2 * L - 1 - t];
  }
  return pos;
}

template <typename F>
void dispatch_nv(int64_t N, F&& f) {
  switch (N / 8) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// Runs task(b, g_or_all, s, p0, p1, spatial) over the work split: per (batch, group) for the plain scan (pos empty),
// per batch with the four directions one after another in each task for the fused cross-scan (race-free merge).
template <typename Task>
void for_each_task(const Dims& d, const Split& split, const std::vector<int32_t>& pos, Task&& task) {
  const bool fused = !pos.empty();
  const int64_t units = fused ? d.batch : d.batch * d.groups;
  at::parallel_for(0, units * split.per_group, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i % split.per_group, unit = i / split.per_group;
      const int64_t p0 = s * split.width, p1 = std::min(d.P, p0 + split.width);
      if (fused) {
        for (int64_t g = 0; g < d.groups; ++g) task(unit, g, s, p0, p1, Spatial{pos.data() + g * d.L, g == 0});
      } else {
        task(unit / d.groups, unit % d.groups, s, p0, p1, Spatial{nullptr, true});
      }
    }
  });
}

// Returns (y like u, hsave); hsave (batch, G, P, chunks, N) holds the state before every chunk when save_states.
std::vector<at::Tensor> run_forward(const Dims& d, const Inputs& in, const at::Tensor& u, bool save_states,
                                    const std::vector<int32_t>& pos) {
  at::Tensor y = at::empty_like(u);
  at::Tensor hsave = at::empty({save_states ? d.batch : 0, d.groups, d.P, d.chunks, d.N}, u.options());
  float* hp = save_states ? hsave.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const Split split(d, 4, pos.empty() ? d.batch * d.groups : d.batch);
  dispatch_nv(d.N, [&](auto nv) {
    for_each_task(d, split, pos, [&](int64_t b, int64_t g, int64_t, int64_t p0, int64_t p1, const Spatial& sp) {
      forward_task<decltype(nv)::value>(d, b, g, p0, p1, in, yp, hp, sp);
    });
  });
  return {y, hsave};
}

// Returns (du like u, ddelta (batch, G, P, L), dA (G, P, N), dBm, dCm, dD (G, P), dbias (G, P)) given dy (like u).
std::vector<at::Tensor> run_backward(const Dims& d, const Inputs& in, const at::Tensor& u, const at::Tensor& hsave,
                                     const at::Tensor& dy, const std::vector<int32_t>& pos) {
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.scalar_type() == at::kFloat && dy.is_contiguous(), "dy must match u");
  TORCH_CHECK(hsave.numel() == d.batch * d.groups * d.P * d.chunks * d.N, "hsave does not match the inputs");
  const Split split(d, 8, pos.empty() ? d.batch * d.groups : d.batch);
  at::Tensor du = at::empty_like(u), ddelta = at::empty({d.batch, d.groups, d.P, d.L}, u.options());
  at::Tensor dA = at::zeros({d.batch, d.groups, d.P, d.N}, u.options());
  at::Tensor dD = at::zeros({d.batch, d.groups, d.P}, u.options()), dbias = at::zeros_like(dD);
  at::Tensor dBp = at::empty({d.batch, d.groups, split.per_group, d.L, d.N}, u.options()), dCp = at::empty_like(dBp);
  const Grads out{du.data_ptr<float>(),  ddelta.data_ptr<float>(), dA.data_ptr<float>(),   dBp.data_ptr<float>(),
                  dCp.data_ptr<float>(), dD.data_ptr<float>(),     dbias.data_ptr<float>()};
  const float* hp = hsave.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  dispatch_nv(d.N, [&](auto nv) {
    for_each_task(d, split, pos, [&](int64_t b, int64_t g, int64_t s, int64_t p0, int64_t p1, const Spatial& sp) {
      backward_task<decltype(nv)::value>(d, b, g, s, p0, p1, split.per_group, in, hp, gp, out, sp);
    });
  });
  return {du, ddelta, dA.sum(0), dBp.sum(2), dCp.sum(2), dD.sum(0), dbias.sum(0)};
}

}  // namespace

// Plain scan: u, delta, y (batch, G, P, L). Returns (y, hsave).
std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                     const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                     const at::Tensor& bias, bool softplus, bool save_states) {
  const Dims d = check_plain(u, delta, A, Bm, Cm, D, bias);
  const Inputs in = inputs(u, delta.data_ptr<float>(), nullptr, nullptr, 0, A, Bm, Cm, D, bias, softplus);
  return run_forward(d, in, u, save_states, {});
}

// Plain scan. Returns (du, ddelta, dA, dBm, dCm, dD, dbias).
std::vector<at::Tensor> scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                      const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                      const at::Tensor& bias, bool softplus, const at::Tensor& hsave,
                                      const at::Tensor& dy) {
  const Dims d = check_plain(u, delta, A, Bm, Cm, D, bias);
  const Inputs in = inputs(u, delta.data_ptr<float>(), nullptr, nullptr, 0, A, Bm, Cm, D, bias, softplus);
  return run_backward(d, in, u, hsave, dy, {});
}

// Fused cross-scan, step-size projection, scan and cross-merge of SS2D. u (batch, H, W, P) channels-last is read in
// the four direction orders; the raw step sizes of direction g are dtw[g] @ dts[:, g] (dts (batch, 4, R, L) and
// B, C (batch, 4, L, N) in each direction's time order); y (batch, H, W, P) is the sum over the directions of
// (scan + D u) at each position. Returns (y, hsave).
std::vector<at::Tensor> cross_scan_forward(const at::Tensor& u, const at::Tensor& dts, const at::Tensor& dtw,
                                           const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                           const at::Tensor& D, const at::Tensor& bias, bool softplus,
                                           bool save_states) {
  const Dims d = check_cross(u, dts, dtw, A, Bm, Cm, D, bias);
  const Inputs in = inputs(u, nullptr, dts.data_ptr<float>(), dtw.data_ptr<float>(), dtw.size(2), A, Bm, Cm, D,
                           bias, softplus);
  return run_forward(d, in, u, save_states, cross_scan_positions(u.size(1), u.size(2)));
}

// Fused cross-scan backward given dy (batch, H, W, P). Returns (du (batch, H, W, P), ddelta (batch, 4, P, L) (the
// gradient of the raw step sizes: dts and dtw get theirs from it), dA, dBm, dCm, dD, dbias).
std::vector<at::Tensor> cross_scan_backward(const at::Tensor& u, const at::Tensor& dts, const at::Tensor& dtw,
                                            const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                            const at::Tensor& D, const at::Tensor& bias, bool softplus,
                                            const at::Tensor& hsave, const at::Tensor& dy) {
  const Dims d = check_cross(u, dts, dtw, A, Bm, Cm, D, bias);
  const Inputs in = inputs(u, nullptr, dts.data_ptr<float>(), dtw.data_ptr<float>(), dtw.size(2), A, Bm, Cm, D,
                           bias, softplus);
  return run_backward(d, in, u, hsave, dy, cross_scan_positions(u.size(1), u.size(2)));
}

bool has_avx2() { return VMU_AVX2 != 0; }

// The machine's ceiling for this kernel: state updates per second of the forward step's arithmetic (exp2 of
// dl * A, the state FMA, the C readout) on register-resident data, all threads, 4 independent channels each.
double probe_updates_per_second(int64_t steps) {
  constexpr int kCh = 4;
  const int64_t threads = at::get_num_threads();
  std::vector<float> sink(threads * 8);
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t th = begin; th < end; ++th) {
      // every channel and half has its own A, so that no exp is shared (the compiler would merge equal ones)
      vec h[kCh][2], a2[kCh][2], y[kCh], dt = vset1(0.01f);
      const vec bu = vset1(0.001f), cv = vset1(0.5f), step = vset1(1e-7f);
      for (int c = 0; c < kCh; ++c) {
        h[c][0] = h[c][1] = vset1(0.1f * c);
        a2[c][0] = vset1(-1.4f - 0.1f * c);
        a2[c][1] = vset1(-2.9f - 0.1f * c);
        y[c] = vzero();
      }
      for (int64_t s = 0; s < steps; ++s) {
        dt = vadd(dt, step);
        for (int c = 0; c < kCh; ++c) {
          h[c][0] = vfma(vexp2(vmul(dt, a2[c][0])), h[c][0], bu);
          h[c][1] = vfma(vexp2(vmul(dt, a2[c][1])), h[c][1], bu);
          y[c] = vadd(y[c], vfma(h[c][0], cv, vmul(h[c][1], cv)));
        }
      }
      for (int c = 1; c < kCh; ++c) y[0] = vadd(y[0], y[c]);
      vstore(sink.data() + th * 8, y[0]);
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(threads * steps * kCh * 16) / seconds;
}

// How many threads at::parallel_for really runs over `tasks` one-step tasks: the distinct thread numbers seen.
// 1 where the build has no OpenMP (at::parallel_for is inlined from ATen's header and then runs serially).
int64_t parallel_threads(int64_t tasks) {
  std::vector<std::atomic<int>> seen(std::max(at::get_num_threads(), 1));
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) { seen[at::get_thread_num() % seen.size()] = 1; });
  int64_t count = 0;
  for (const auto& s : seen) count += s.load();
  return count;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan forward (CPU, float32)");
  m.def("backward", &scan_backward, "selective scan backward (CPU, float32)");
  m.def("cross_scan_forward", &cross_scan_forward, "fused SS2D cross-scan + selective scan + merge forward");
  m.def("cross_scan_backward", &cross_scan_backward, "fused SS2D cross-scan + selective scan + merge backward");
  m.def("has_avx2", &has_avx2, "whether this build uses AVX2+FMA intrinsics");
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for runs in this build");
  m.def("probe_updates_per_second", &probe_updates_per_second, "peak state updates/s of the step arithmetic");
}
