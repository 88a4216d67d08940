// Fused SS2D cross-scan + selective scan + cross-merge on the CPU (the ``cpu_fused`` path), forward and backward.
//
//   h_t = exp(dl_t * A) * h_{t-1} + dl_t * u_t * B_t,    y_t = <C_t, h_t> + D * u_t,    dl_t = softplus(raw_t + bias)
//
// with A = -exp(A_log): the kernel takes SS2D's A_logs parameter, forms A while packing each direction's parameters
// and returns the gradient of A_log (two small PyTorch ops a block fewer, forward and backward).
//
// u (batch, H, W, P) channels-last is read in the order of each of the four cross-scan directions (row-major,
// column-major and both reversed): step t of direction g is spatial position pos_g[t]. The projections x_dbl
// (batch, H * W, 4, R + 2N), in row-major positions, hold each direction's dts, B and C at every position and are
// read at pos_g[t] too. The raw step sizes are the low-rank product raw_t[p] = dts_t . dtw[g, p, :], and y
// (batch, H, W, P) is the sum over the directions of (scan + D u) at each position (the cross-merge). Neither the
// four orders of u or x_dbl nor the (batch, 4, P, L) step sizes are materialised in forward.
//
// Lanes run over W consecutive channels (W = kWide: 16 where the build has AVX-512, else 8), contiguous in the
// channels-last map: a step loads the W channels' u at its position, forms their step sizes (R FMAs and a softplus)
// and updates each channel's N states as N vectors, broadcasting B_t[n] and C_t[n]; the readout is a vertical FMA
// chain, so forward needs no lane sums. Backward's dB and dC are sums over channels: at each step a channel group's
// N products are reduced across lanes in registers, 8 states at a time (S::sum8), and added over the task's groups
// in a chunk-sized buffer of N floats a step (W-lane partials kept in memory instead cost a load and a store per
// state and step, and their traffic bounded the backward). The gradient of the raw step sizes stays in a
// chunk-sized buffer: once per chunk it gives dts's gradient (lane sums of dd_t[p] dtw[g, p, r]) and adds to dtw's
// (dd_t[p] dts_t[r] over the steps), so no (4, batch, L, P) tensor is written in backward either.
//
// Tasks are (batch, slice of channel groups). A task runs the four directions of its channels one after the
// other, so the merge needs no atomics. For one direction it goes chunk by chunk: the chunk's projection rows are
// copied once into consecutive rows (independent loads, instead of a cache miss inside the recurrence at every
// step of a column-major direction), then every channel group runs through the chunk. Forward optionally saves the
// state at every chunk start; backward recomputes a chunk's states from it and runs the adjoint recurrence
// backwards.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace vmu {
namespace {

constexpr float kLog2e = 1.44269504088896341f;
constexpr int64_t W = kWide;  // channels a vector
using S = Simd<kWide>;
using V = S::V;

struct Dims {
  int64_t batch, L, P, N, R, chunks, groups;  // groups: W-channel groups, ceil(P / W)
  int64_t rank8() const { return (R + 7) / 8 * 8; }  // R rounded up to 8: dtw is packed to it, zero-filled
};

struct Inputs {
  const float *u, *xdbl, *dtw, *Alog, *D, *bias;
};

// One chunk of one direction's steps: each step's spatial position, its map offset (channel 0 of u, y, dy, du in
// batch element b) and its projections (dts: R floats, then B and C: N floats each), copied from x_dbl into
// consecutive rows.
struct ChunkRows {
  int64_t len = 0, width;
  std::vector<int64_t> pix, at;
  std::vector<float> proj;
  explicit ChunkRows(const Dims& d) : width(d.R + 2 * d.N), pix(kChunk), at(kChunk), proj(kChunk * width) {}
  void load(const Dims& d, const Inputs& in, const int32_t* pos, int64_t b, int64_t g, int64_t c) {
    len = std::min(d.L, (c + 1) * kChunk) - c * kChunk;
    for (int64_t i = 0; i < len; ++i) {
      pix[i] = pos[c * kChunk + i];
      at[i] = (b * d.L + pix[i]) * d.P;
      const float* src = in.xdbl + ((b * d.L + pix[i]) * 4 + g) * width;
      std::copy(src, src + width, proj.data() + i * width);
    }
  }
  const float* dts(int64_t i) const { return proj.data() + i * width; }
};

// Tasks: `slices` slices of `width` consecutive channel groups per batch element. at::parallel_for hands each thread
// one contiguous run of tasks, so extra tasks balance nothing and cost a copy of the chunk rows each: the fewest
// whose count, batch * slices = lcm(batch, threads), splits evenly over the threads (1 slice at batch 8 on 2 threads,
// 2 at batch 1 or 3), where the channel groups allow.
struct Split {
  int64_t slices, width;
  explicit Split(const Dims& d) {
    const int64_t threads = at::get_num_threads();
    const int64_t want = threads / std::gcd(d.batch, threads);
    width = (d.groups + std::min(want, d.groups) - 1) / std::min(want, d.groups);
    slices = (d.groups + width - 1) / width;
  }
};

// The lanes of channel group q that hold channels (all but the last group's are full).
inline S::Mask group_lanes(const Dims& d, int64_t q) {
  return S::mask(static_cast<int>(std::min<int64_t>(W, d.P - W * q)));
}

// One direction's per-channel parameters for channel groups [q0, q1), W lanes a group, zero past P: A = -exp(A_log)
// (and A log2 e for exp2) as N vectors a group, dtw as rank8() vectors a group (zero past R), bias and D one vector
// each.
struct Packed {
  std::vector<float> a, a2, w, bias, skip;
  Packed(const Dims& d, const Inputs& in, int64_t g, int64_t q0, int64_t q1)
      : a((q1 - q0) * d.N * W), a2(a.size()), w((q1 - q0) * d.rank8() * W), bias((q1 - q0) * W), skip(bias.size()) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t k = q - q0;
      for (int64_t l = 0; l < W && W * q + l < d.P; ++l) {
        const int64_t ch = g * d.P + W * q + l;
        for (int64_t n = 0; n < d.N; ++n) a[(k * d.N + n) * W + l] = in.Alog[ch * d.N + n];
        for (int64_t r = 0; r < d.R; ++r) w[(k * d.rank8() + r) * W + l] = in.dtw[ch * d.R + r];
        bias[k * W + l] = in.bias != nullptr ? in.bias[ch] : 0.0f;
        skip[k * W + l] = in.D != nullptr ? in.D[ch] : 0.0f;
      }
      // A = -2^(A_log log2 e) a vector at a time; lanes past P stay zero
      const S::Mask m = group_lanes(d, q);
      for (int64_t n = 0; n < d.N; ++n) {
        float* at = a.data() + (k * d.N + n) * W;
        const V av = vmul(vexp2(vmul(S::load(at), S::set1(kLog2e))), S::set1(-1.0f));
        vstore_n(at, av, m);
        vstore_n(a2.data() + (k * d.N + n) * W, vmul(av, S::set1(kLog2e)), m);
      }
    }
  }
};

// Steps whose raw step sizes are formed together, each in its own accumulator.
constexpr int64_t kStepBlock = 8;
static_assert(kChunk % kStepBlock == 0, "a chunk holds whole blocks of steps");

// The raw step sizes dts_t . w + bias of one channel group (w: R vectors) at the chunk's steps, W lanes a step, into
// raw (kChunk rows; the softplus follows in the caller's pass over the steps). One step's R products are a chain of
// dependent FMAs, so kStepBlock steps run side by side (at R = 24 the chained form took a quarter of the forward
// scan). A block's rows past rows.len are read (zero or an earlier chunk's: finite) and stored, never used.
inline void raw_step_sizes(const ChunkRows& rows, const float* w, V bias, int64_t R, float* raw) {
  for (int64_t i0 = 0; i0 < rows.len; i0 += kStepBlock) {
    V acc[kStepBlock];
    VMU_UNROLL_STATES
    for (int64_t j = 0; j < kStepBlock; ++j) acc[j] = bias;
    for (int64_t r = 0; r < R; ++r) {
      const V wr = S::load(w + W * r);
      VMU_UNROLL_STATES
      for (int64_t j = 0; j < kStepBlock; ++j) acc[j] = vfma(wr, S::set1(rows.dts(i0 + j)[r]), acc[j]);
    }
    VMU_UNROLL_STATES
    for (int64_t j = 0; j < kStepBlock; ++j) vstore(raw + W * (i0 + j), acc[j]);
  }
}

// The merges read and write the maps at each step's position, a new cache line at every step of a column-major
// direction: the line kAhead steps on is fetched early, so that its miss does not stall the recurrence.
constexpr int64_t kAhead = 8;
inline void prefetch_rw(const float* p) { __builtin_prefetch(p, 1, 3); }

// map[at] = v for the first direction, map[at] += v for the others (the cross-merge), on the group's lanes.
inline void merge(float* at, V v, bool first, const S::Mask& m) {
  vstore_n(at, first ? v : vadd(S::load_n(at, m), v), m);
}

// The row-major positions h * W + w visited at steps t = 0 .. L - 1 by the four directions, 4 x L: row-major,
// column-major, and the two reversed (as ops/cross_scan.py).
std::vector<int32_t> positions(int64_t H, int64_t W) {
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

// hsave (batch, 4, chunks, groups, N, W): the state of every channel group before every chunk.
inline int64_t hsave_at(const Dims& d, int64_t bg, int64_t c, int64_t q) {
  return ((bg * d.chunks + c) * d.groups + q) * d.N * W;
}

template <int NV>
void forward_task(const Dims& d, const Inputs& in, const int32_t* pos4, int64_t b, int64_t q0, int64_t q1, float* y,
                  float* hsave) {
  constexpr int64_t N = 8 * NV;
  std::vector<float> state((q1 - q0) * N * W), steps(3 * kChunk * W);
  float* const dlloc = steps.data();  // step sizes, dl * u and D * u of the chunk's steps, W lanes each
  float* const duloc = dlloc + kChunk * W;
  float* const yloc = duloc + kChunk * W;
  ChunkRows rows(d);
  for (int64_t g = 0; g < 4; ++g) {
    const Packed pk(d, in, g, q0, q1);
    std::fill(state.begin(), state.end(), 0.0f);
    for (int64_t c = 0; c < d.chunks; ++c) {
      rows.load(d, in, pos4 + g * d.L, b, g, c);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t k = q - q0;
        const S::Mask m = group_lanes(d, q);
        const float* a2 = pk.a2.data() + k * N * W;
        const float* w = pk.w.data() + k * d.rank8() * W;
        const V bias = S::load(pk.bias.data() + k * W), skip = S::load(pk.skip.data() + k * W);
        float* hs = state.data() + k * N * W;
        if (hsave != nullptr) std::copy(hs, hs + N * W, hsave + hsave_at(d, b * 4 + g, c, q));
        // The chunk's inputs and step sizes first (independent steps), then the recurrence.
        raw_step_sizes(rows, w, bias, d.R, dlloc);
        for (int64_t i = 0; i < rows.len; ++i) {
          const V ut = S::load_n(in.u + rows.at[i] + W * q, m);
          const V dl = vsoftplus(S::load(dlloc + W * i), static_cast<V*>(nullptr));
          vstore(dlloc + W * i, dl);
          vstore(duloc + W * i, vmul(dl, ut));
          vstore(yloc + W * i, vmul(skip, ut));
        }
        V h[N];
        for (int64_t n = 0; n < N; ++n) h[n] = S::load(hs + W * n);
        for (int64_t i = 0; i < rows.len; ++i) {
          if (i + kAhead < rows.len) prefetch_rw(y + rows.at[i + kAhead] + W * q);
          const V dl = S::load(dlloc + W * i), dtu = S::load(duloc + W * i);
          const float* bt = rows.dts(i) + d.R;
          const float* ct = bt + N;
          V yv[4] = {S::load(yloc + W * i), S::zero(), S::zero(), S::zero()};  // 4 partial sums: short FMA chains
          VMU_UNROLL_STATES
          for (int64_t n = 0; n < N; ++n) {
            h[n] = vfma(vexp2(vmul(dl, S::load(a2 + W * n))), h[n], vmul(dtu, S::set1(bt[n])));
            yv[n % 4] = vfma(h[n], S::set1(ct[n]), yv[n % 4]);
          }
          merge(y + rows.at[i] + W * q, vadd(vadd(yv[0], yv[1]), vadd(yv[2], yv[3])), g == 0, m);
        }
        for (int64_t n = 0; n < N; ++n) vstore(hs + W * n, h[n]);
      }
    }
  }
}

// du (batch, L, P) like u; dxdbl (batch, slices, L, 4, R + 2N) like x_dbl, the task's slice s writes its partial
// sums; ddtw (batch, 4, P, R); dAlog (batch, 4, P, N), the gradient of A_log (dA * A); dD, dbias (batch, 4, P).
struct Grads {
  float *du, *dxdbl, *ddtw, *dAlog, *dD, *dbias;
};

// The chunk's step-size gradients dd (ddloc: len steps x the task's groups, W lanes each) into dts's gradient at
// each step (lane sums of dd . dtw[:, r], written to the step's dxdbl row) and into dtw's (dwacc: groups x rank8()
// vectors, dd dts_t[r] added over the steps; slots past R collect products with B and are never read).
inline void step_size_grads(const Dims& d, const ChunkRows& rows, const float* ddloc, int64_t groups, const float* w,
                            float* dwacc, float* const* xrow) {
  const int64_t R8 = d.rank8();
  alignas(32) float sums[8];
  for (int64_t i = 0; i < rows.len; ++i) {
    for (int64_t r0 = 0; r0 < R8; r0 += 8) {
      V acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = S::zero();
      for (int64_t k = 0; k < groups; ++k) {
        const V dd = S::load(ddloc + (i * groups + k) * W);
        const float* wk = w + (k * R8 + r0) * W;
        for (int j = 0; j < 8; ++j) acc[j] = vfma(dd, S::load(wk + W * j), acc[j]);
      }
      vstore(sums, S::sum8(acc));
      std::copy(sums, sums + std::min<int64_t>(8, d.R - r0), xrow[i] + r0);
    }
  }
  for (int64_t k = 0; k < groups; ++k) {
    for (int64_t r0 = 0; r0 < R8; r0 += 8) {
      float* acc_at = dwacc + (k * R8 + r0) * W;
      V acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = S::load(acc_at + W * j);
      for (int64_t i = 0; i < rows.len; ++i) {
        const V dd = S::load(ddloc + (i * groups + k) * W);
        const float* dts = rows.dts(i) + r0;  // r0 + 8 <= R8 <= R + 7 < R + 2N: within the row
        for (int j = 0; j < 8; ++j) acc[j] = vfma(dd, S::set1(dts[j]), acc[j]);
      }
      for (int j = 0; j < 8; ++j) vstore(acc_at + W * j, acc[j]);
    }
  }
}

// out[0 .. 8) += sums
inline void add_sums(float* out, vec sums) { vstore(out, vadd(vload(out), sums)); }

template <int NV>
void backward_task(const Dims& d, const Inputs& in, const int32_t* pos4, int64_t b, int64_t s, int64_t slices,
                   int64_t q0, int64_t q1, const float* hsave, const float* dy, const Grads& out) {
  constexpr int64_t N = 8 * NV;
  const int64_t groups = q1 - q0;
  std::vector<float> carry(groups * N * W), dacc(carry.size()), dskip(groups * W), dbias(groups * W);
  std::vector<float> mloc(kChunk * N * W), eloc(mloc.size()), dbsum(kChunk * N), dcsum(dbsum.size());
  std::vector<float> ddloc(kChunk * groups * W), dwacc(groups * d.rank8() * W);
  std::vector<float*> xrow(kChunk);  // each step's dxdbl row (dts's gradient, then B's and C's)
  std::vector<float> steps(4 * kChunk * W);  // u, dy, dl, sigmoid of the chunk's steps, W lanes each
  float* const uloc = steps.data();
  float* const gyloc = uloc + kChunk * W;
  float* const dlloc = gyloc + kChunk * W;
  float* const sgloc = dlloc + kChunk * W;
  ChunkRows rows(d);
  for (int64_t g = 0; g < 4; ++g) {
    const Packed pk(d, in, g, q0, q1);
    for (auto* v : {&carry, &dacc, &dskip, &dbias, &dwacc}) std::fill(v->begin(), v->end(), 0.0f);
    const int64_t bg = b * 4 + g;
    for (int64_t c = d.chunks - 1; c >= 0; --c) {
      rows.load(d, in, pos4 + g * d.L, b, g, c);
      const int64_t len = rows.len;
      for (int64_t i = 0; i < len; ++i) {
        xrow[i] = out.dxdbl + (((b * slices + s) * d.L + rows.pix[i]) * 4 + g) * (d.R + 2 * N);
      }
      std::fill(dbsum.begin(), dbsum.begin() + len * N, 0.0f);
      std::fill(dcsum.begin(), dcsum.begin() + len * N, 0.0f);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t k = q - q0;
        const S::Mask m = group_lanes(d, q);
        const float* a = pk.a.data() + k * N * W;
        const float* a2 = pk.a2.data() + k * N * W;
        const float* w = pk.w.data() + k * d.rank8() * W;
        const V bias = S::load(pk.bias.data() + k * W), skip = S::load(pk.skip.data() + k * W);
        const float* h0 = hsave + hsave_at(d, bg, c, q);
        // Recompute the chunk's decays e and decayed states e h_{t-1} (what the adjoint reads) from the saved
        // chunk-start state, and dC_t = the sum over channels of dy_t h_t.
        raw_step_sizes(rows, w, bias, d.R, dlloc);
        for (int64_t i = 0; i < len; ++i) {
          V sg;
          vstore(uloc + W * i, S::load_n(in.u + rows.at[i] + W * q, m));
          vstore(gyloc + W * i, S::load_n(dy + rows.at[i] + W * q, m));
          vstore(dlloc + W * i, vsoftplus(S::load(dlloc + W * i), &sg));
          vstore(sgloc + W * i, sg);
        }
        V h[N];
        for (int64_t n = 0; n < N; ++n) h[n] = S::load(h0 + W * n);
        for (int64_t i = 0; i < len; ++i) {
          const V dl = S::load(dlloc + W * i), dtu = vmul(dl, S::load(uloc + W * i)), gyt = S::load(gyloc + W * i);
          const float* bt = rows.dts(i) + d.R;
          V dc[8];
          VMU_UNROLL_STATES
          for (int64_t n = 0; n < N; ++n) {
            const V e = vexp2(vmul(dl, S::load(a2 + W * n)));
            const V decayed = vmul(e, h[n]);
            h[n] = vfma(dtu, S::set1(bt[n]), decayed);
            vstore(eloc.data() + (i * N + n) * W, e);
            vstore(mloc.data() + (i * N + n) * W, decayed);
            dc[n % 8] = vmul(gyt, h[n]);
            if (n % 8 == 7) add_sums(dcsum.data() + i * N + n - 7, S::sum8(dc));
          }
        }
        // Adjoint recurrence backwards: gs_t = dy_t C_t + exp(dl_{t+1} A) gs_{t+1}.
        float* cs = carry.data() + k * N * W;
        float* da = dacc.data() + k * N * W;
        V gs[N], dav[N];
        for (int64_t n = 0; n < N; ++n) {
          gs[n] = S::load(cs + W * n);
          dav[n] = S::load(da + W * n);
        }
        V dsk = S::load(dskip.data() + k * W), dbs = S::load(dbias.data() + k * W);
        for (int64_t i = len - 1; i >= 0; --i) {
          if (i >= kAhead) prefetch_rw(out.du + rows.at[i - kAhead] + W * q);
          const V gyt = S::load(gyloc + W * i), dt = S::load(dlloc + W * i), ut = S::load(uloc + W * i);
          const V dtu = vmul(dt, ut);
          const float* bt = rows.dts(i) + d.R;
          const float* ct = bt + N;
          const float* mt = mloc.data() + i * N * W;
          const float* e = eloc.data() + i * N * W;
          V x_a[2] = {S::zero(), S::zero()}, gb[2] = {S::zero(), S::zero()};  // 2 partial sums each: short chains
          V db[8];
          VMU_UNROLL_STATES
          for (int64_t n = 0; n < N; ++n) {
            const V en = S::load(e + W * n);
            const V gj = vfma(gyt, S::set1(ct[n]), gs[n]);
            const V x = vmul(gj, S::load(mt + W * n));  // gradient w.r.t. dl_t * A
            dav[n] = vfma(x, dt, dav[n]);
            x_a[n % 2] = vfma(x, S::load(a + W * n), x_a[n % 2]);
            gb[n % 2] = vfma(gj, S::set1(bt[n]), gb[n % 2]);
            db[n % 8] = vmul(gj, dtu);
            if (n % 8 == 7) add_sums(dbsum.data() + i * N + n - 7, S::sum8(db));
            gs[n] = vmul(gj, en);
          }
          const V gbs = vadd(gb[0], gb[1]);
          const V dd = vmul(vfma(ut, gbs, vadd(x_a[0], x_a[1])), S::load(sgloc + W * i));  // w.r.t. the raw step
          vstore(ddloc.data() + (i * groups + k) * W, dd);
          merge(out.du + rows.at[i] + W * q, vfma(dt, gbs, vmul(skip, gyt)), g == 0, m);
          dsk = vfma(gyt, ut, dsk);
          dbs = vadd(dbs, dd);
        }
        for (int64_t n = 0; n < N; ++n) {
          vstore(cs + W * n, gs[n]);
          vstore(da + W * n, dav[n]);
        }
        vstore(dskip.data() + k * W, dsk);
        vstore(dbias.data() + k * W, dbs);
      }
      // The chunk's dts gradients (lane sums, 8 at a time) and dtw's, and its dB and dC, at the steps' positions.
      step_size_grads(d, rows, ddloc.data(), groups, pk.w.data(), dwacc.data(), xrow.data());
      for (int64_t i = 0; i < len; ++i) {
        std::copy(dbsum.data() + i * N, dbsum.data() + (i + 1) * N, xrow[i] + d.R);
        std::copy(dcsum.data() + i * N, dcsum.data() + (i + 1) * N, xrow[i] + d.R + N);
      }
    }
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t k = q - q0;
      for (int64_t l = 0; l < W && W * q + l < d.P; ++l) {
        const int64_t row = bg * d.P + W * q + l;
        for (int64_t n = 0; n < N; ++n) {
          out.dAlog[row * N + n] = dacc[(k * N + n) * W + l] * pk.a[(k * N + n) * W + l];  // dA/dA_log = A
        }
        for (int64_t r = 0; r < d.R; ++r) out.ddtw[row * d.R + r] = dwacc[(k * d.rank8() + r) * W + l];
        out.dD[row] = dskip[k * W + l];
        out.dbias[row] = dbias[k * W + l];
      }
    }
  }
}

Dims check(const at::Tensor& u, const at::Tensor& xdbl, const at::Tensor& dtw, const at::Tensor& Alog,
           const at::Tensor& D, const at::Tensor& bias) {
  check_floats({&u, &xdbl, &dtw});
  TORCH_CHECK(u.dim() == 4 && Alog.dim() == 3, "u must be channels-last (batch, H, W, P)");
  const int64_t L = u.size(1) * u.size(2), P = u.size(3);
  const Dims d{u.size(0), L, P, Alog.size(2), dtw.dim() == 3 ? dtw.size(2) : 0, (L + kChunk - 1) / kChunk,
               (P + W - 1) / W};
  TORCH_CHECK(dtw.dim() == 3 && dtw.size(0) == 4 && dtw.size(1) == P, "dt_projs_weight must be (4, P, R)");
  TORCH_CHECK(xdbl.dim() == 4 && xdbl.size(0) == d.batch && xdbl.size(1) == L && xdbl.size(2) == 4 &&
                  xdbl.size(3) == d.R + 2 * d.N,
              "x_dbl must be (batch, H * W, 4, R + 2 N)");
  check_params(4, P, d.N, Alog, D, bias);
  return d;
}

Inputs inputs(const at::Tensor& u, const at::Tensor& xdbl, const at::Tensor& dtw, const at::Tensor& Alog,
              const at::Tensor& D, const at::Tensor& bias) {
  return {u.data_ptr<float>(),
          xdbl.data_ptr<float>(),
          dtw.data_ptr<float>(),
          Alog.data_ptr<float>(),
          D.numel() ? D.data_ptr<float>() : nullptr,
          bias.numel() ? bias.data_ptr<float>() : nullptr};
}

// Runs task(b, s, q0, q1) over the split, in parallel.
template <typename Task>
void for_each_task(const Dims& d, const Split& split, Task&& task) {
  at::parallel_for(0, d.batch * split.slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / split.slices, s = i % split.slices;
      task(b, s, s * split.width, std::min(d.groups, (s + 1) * split.width));
    }
  });
}

}  // namespace

std::vector<at::Tensor> cross_scan_forward(const at::Tensor& u, const at::Tensor& xdbl, const at::Tensor& dtw,
                                           const at::Tensor& Alog, const at::Tensor& D, const at::Tensor& bias,
                                           bool save_states) {
  const Dims d = check(u, xdbl, dtw, Alog, D, bias);
  const Inputs in = inputs(u, xdbl, dtw, Alog, D, bias);
  const std::vector<int32_t> pos = positions(u.size(1), u.size(2));
  at::Tensor y = at::empty_like(u);
  at::Tensor hsave = at::empty({save_states ? d.batch : 0, 4, d.chunks, d.groups, d.N, W}, u.options());
  float* hp = save_states ? hsave.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  dispatch_nv(d.N, [&](auto nv) {
    for_each_task(d, Split(d), [&](int64_t b, int64_t, int64_t q0, int64_t q1) {
      forward_task<decltype(nv)::value>(d, in, pos.data(), b, q0, q1, yp, hp);
    });
  });
  return {y, hsave};
}

std::vector<at::Tensor> cross_scan_backward(const at::Tensor& u, const at::Tensor& xdbl, const at::Tensor& dtw,
                                            const at::Tensor& Alog, const at::Tensor& D, const at::Tensor& bias,
                                            const at::Tensor& hsave, const at::Tensor& dy) {
  const Dims d = check(u, xdbl, dtw, Alog, D, bias);
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.scalar_type() == at::kFloat && dy.is_contiguous(), "dy must match u");
  TORCH_CHECK(hsave.numel() == d.batch * 4 * d.chunks * d.groups * d.N * W, "hsave does not match the inputs");
  const Inputs in = inputs(u, xdbl, dtw, Alog, D, bias);
  const std::vector<int32_t> pos = positions(u.size(1), u.size(2));
  const Split split(d);
  at::Tensor du = at::empty_like(u), ddtw = at::empty({d.batch, 4, d.P, d.R}, u.options());
  at::Tensor dAlog = at::empty({d.batch, 4, d.P, d.N}, u.options());
  at::Tensor dD = at::empty({d.batch, 4, d.P}, u.options()), dbias = at::empty_like(dD);
  at::Tensor dx = at::empty({d.batch, split.slices, d.L, 4, d.R + 2 * d.N}, u.options());
  const Grads out{du.data_ptr<float>(), dx.data_ptr<float>(), ddtw.data_ptr<float>(),
                  dAlog.data_ptr<float>(), dD.data_ptr<float>(), dbias.data_ptr<float>()};
  const float* hp = hsave.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  dispatch_nv(d.N, [&](auto nv) {
    for_each_task(d, split, [&](int64_t b, int64_t s, int64_t q0, int64_t q1) {
      backward_task<decltype(nv)::value>(d, in, pos.data(), b, s, split.slices, q0, q1, hp, gp, out);
    });
  });
  return {du, split.slices == 1 ? dx.squeeze(1) : dx.sum(1), ddtw.sum(0), dAlog.sum(0), dD.sum(0), dbias.sum(0)};
}

}  // namespace vmu
