// Selective scan on the CPU: forward and backward of the S6 recurrence (the ``cpu`` backend).
//
//   h_t = exp(dl_t * A) * h_{t-1} + dl_t * u_t * B_t,    y_t = <C_t, h_t> + D * u_t
//
//   dl_t = softplus(delta_t + bias) (or delta_t + bias)
//
// Layouts (all float32, contiguous): u, delta, y (batch, G, P, L); A (G, P, N); Bm, Cm time-major
// (batch, G, L, N); D, bias (G, P) or empty. N must be a multiple of 8 (8 lanes of one AVX2 register), <= 32.
// The fused SS2D op of the ``cpu_fused`` path is cross_scan_cpu.cpp (its functions are bound here too).
//
// Work is split into tasks of consecutive channels of one (batch, group); inside a task the time axis is cut
// into blocks of kBlockChunks * kChunk steps and every channel of the task runs through a block before the next
// block starts, so the block's B and C (and, in backward, dB and dC) stay in L2 while u, delta and y stream.
// The state of one channel lives in NV registers (lanes over the state index n). Forward optionally saves the
// state at every chunk start; backward recomputes a chunk's states from it and runs the adjoint recurrence
// backwards, so no per-step state of the whole sequence is stored. exp is 2^x by range reduction plus a
// polynomial (simd.h); softplus and its derivative are vectorised over time too.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace vmu {

void check_floats(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && !t->is_cuda(),
                "all inputs must be contiguous float32 CPU tensors");
  }
}

void check_params(int64_t groups, int64_t P, int64_t N, const at::Tensor& A, const at::Tensor& D,
                  const at::Tensor& bias) {
  TORCH_CHECK(N % 8 == 0 && N <= 32, "the cpu scan kernel needs N in {8, 16, 24, 32}, got ", N);
  check_floats({&A, &D, &bias});
  TORCH_CHECK(A.dim() == 3 && A.size(0) == groups && A.size(1) == P, "A must be (G, P, N)");
  TORCH_CHECK(D.numel() == 0 || D.numel() == groups * P, "D must be empty or (G, P)");
  TORCH_CHECK(bias.numel() == 0 || bias.numel() == groups * P, "delta_bias must be empty or (G, P)");
}

}  // namespace vmu

namespace {

using namespace vmu;

constexpr int64_t kBlockChunks = 8;  // chunks per time block: a block's B and C (and dB, dC) stay in L2

// out[t] = sum of the 8 floats of rows[t] for t < count (rows: count x 8 floats, out: count floats).
inline void reduce_rows(const float* rows, int64_t count, float* out) {
  int64_t t = 0;
  for (; t + 8 <= count; t += 8) Simd<8>::sum_rows8(rows + 8 * t, out + t);
  for (; t < count; ++t) out[t] = hsum(rows + 8 * t);
}

struct Dims {
  int64_t batch, groups, P, L, N, chunks;
};

// Channels [p0, p1) per task, split so that there are a few tasks per thread over the (batch, group) pairs.
struct Split {
  int64_t per_group, width;
  Split(const Dims& d, int64_t min_width) {
    const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads()) / std::max<int64_t>(1, d.batch * d.groups));
    per_group = std::max<int64_t>(1, std::min<int64_t>(want, d.P / std::max<int64_t>(1, min_width)));
    width = (d.P + per_group - 1) / per_group;
    per_group = (d.P + width - 1) / width;
  }
};

// Per-channel inputs of the recurrence; D, bias may be null (no skip, zero bias).
struct Inputs {
  const float *u, *delta, *A, *Bm, *Cm, *D, *bias;
  bool softplus;
};

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
    alignas(32) float a[8], b[8];
    vec s;
    vstore(a, vsoftplus(vload(x + i), &s));
    vstore(b, s);
    for (int64_t j = 0; j < 8 && i + j < count; ++j) {
      dl[i + j] = a[j];
      sg[i + j] = b[j];
    }
  }
}

template <int NV>
void forward_task(const Dims& d, int64_t b, int64_t g, int64_t p0, int64_t p1, const Inputs& in, float* y,
                  float* hsave) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = d.L;
  const float* bg = in.Bm + (b * d.groups + g) * L * N;
  const float* cg = in.Cm + (b * d.groups + g) * L * N;
  std::vector<float> state((p1 - p0) * N, 0.0f);
  alignas(32) float acc[kChunk * 8], dl[kChunk], sg[kChunk];
  for (int64_t c0 = 0; c0 < d.chunks; c0 += kBlockChunks) {
    const int64_t c1 = std::min(d.chunks, c0 + kBlockChunks);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk), len = t1 - t0;
        const int64_t row = (b * d.groups + g) * d.P + p, ch = g * d.P + p;
        const float* ur = in.u + row * L + t0;
        step_sizes(in.delta + row * L + t0, len, in.bias ? in.bias[ch] : 0.0f, in.softplus, dl, sg);
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
        float* yr = y + row * L + t0;
        reduce_rows(acc, len, yr);
        if (in.D != nullptr) {
          const float dp = in.D[ch];
          for (int64_t i = 0; i < len; ++i) yr[i] += dp * ur[i];
        }
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
                   const Inputs& in, const float* hsave, const float* dy, const Grads& out) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = d.L;
  const float* bg = in.Bm + (b * d.groups + g) * L * N;
  const float* cg = in.Cm + (b * d.groups + g) * L * N;
  float* dbg = out.dBp + ((b * d.groups + g) * per_group + s) * L * N;
  float* dcg = out.dCp + ((b * d.groups + g) * per_group + s) * L * N;
  std::vector<float> carry((p1 - p0) * N, 0.0f);
  std::vector<float> hloc(kChunk * N), eloc(kChunk * N), dbloc(kBlockChunks * kChunk * N), dcloc(dbloc.size());
  alignas(32) float qrows[kChunk * 8], grows[kChunk * 8], qsum[kChunk], gsum[kChunk], dl[kChunk], sg[kChunk];
  for (int64_t c1 = d.chunks; c1 > 0; c1 -= kBlockChunks) {
    const int64_t c0 = std::max<int64_t>(0, c1 - kBlockChunks);
    const int64_t bt0 = c0 * kChunk, bt1 = std::min(L, c1 * kChunk);
    std::fill(dbloc.begin(), dbloc.end(), 0.0f);
    std::fill(dcloc.begin(), dcloc.end(), 0.0f);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t c = c1 - 1; c >= c0; --c) {
        const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk), len = t1 - t0;
        const int64_t row = (b * d.groups + g) * d.P + p, ch = g * d.P + p;
        const float* ur = in.u + row * L + t0;
        const float* gy = dy + row * L + t0;
        const float* h0 = hsave + (row * d.chunks + c) * N;
        step_sizes(in.delta + row * L + t0, len, in.bias ? in.bias[ch] : 0.0f, in.softplus, dl, sg);
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
        float* dur = out.du + row * L + t0;
        float* ddr = out.ddelta + row * L + t0;
        for (int64_t i = 0; i < len; ++i) {
          dur[i] = dl[i] * gsum[i] + dp * gy[i];
          ddr[i] = qsum[i] * sg[i];
          db += ddr[i];
          dd += gy[i] * ur[i];
        }
        out.dD[row] += dd;
        out.dbias[row] += db;
      }
    }
    std::copy(dbloc.begin(), dbloc.begin() + (bt1 - bt0) * N, dbg + bt0 * N);
    std::copy(dcloc.begin(), dcloc.begin() + (bt1 - bt0) * N, dcg + bt0 * N);
  }
}

// Plain scan: u, delta (batch, G, P, L).
Dims check_plain(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                 const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& bias) {
  check_floats({&u, &delta});
  TORCH_CHECK(u.dim() == 4 && delta.sizes() == u.sizes() && A.dim() == 3, "u and delta must be (batch, G, P, L)");
  const Dims d{u.size(0), u.size(1), u.size(2), u.size(3), A.size(2), (u.size(3) + kChunk - 1) / kChunk};
  check_params(d.groups, d.P, d.N, A, D, bias);
  check_floats({&Bm, &Cm});
  TORCH_CHECK(Bm.dim() == 4 && Bm.size(0) == d.batch && Bm.size(1) == d.groups && Bm.size(2) == d.L &&
                  Bm.size(3) == d.N && Cm.sizes() == Bm.sizes(),
              "B and C must be time-major (batch, G, L, N)");
  return d;
}

Inputs inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
              const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& bias, bool softplus) {
  return {u.data_ptr<float>(),
          delta.data_ptr<float>(),
          A.data_ptr<float>(),
          Bm.data_ptr<float>(),
          Cm.data_ptr<float>(),
          D.numel() ? D.data_ptr<float>() : nullptr,
          bias.numel() ? bias.data_ptr<float>() : nullptr,
          softplus};
}

// Runs task(b, g, s, p0, p1) over the work split, per (batch, group) and channel slice s.
template <typename Task>
void for_each_task(const Dims& d, const Split& split, Task&& task) {
  at::parallel_for(0, d.batch * d.groups * split.per_group, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i % split.per_group, unit = i / split.per_group;
      const int64_t p0 = s * split.width, p1 = std::min(d.P, p0 + split.width);
      task(unit / d.groups, unit % d.groups, s, p0, p1);
    }
  });
}

// Returns (y like u, hsave); hsave (batch, G, P, chunks, N) holds the state before every chunk when save_states.
std::vector<at::Tensor> run_forward(const Dims& d, const Inputs& in, const at::Tensor& u, bool save_states) {
  at::Tensor y = at::empty_like(u);
  at::Tensor hsave = at::empty({save_states ? d.batch : 0, d.groups, d.P, d.chunks, d.N}, u.options());
  float* hp = save_states ? hsave.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const Split split(d, 4);
  dispatch_nv(d.N, [&](auto nv) {
    for_each_task(d, split, [&](int64_t b, int64_t g, int64_t, int64_t p0, int64_t p1) {
      forward_task<decltype(nv)::value>(d, b, g, p0, p1, in, yp, hp);
    });
  });
  return {y, hsave};
}

// Returns (du like u, ddelta (batch, G, P, L), dA (G, P, N), dBm, dCm, dD (G, P), dbias (G, P)) given dy (like u).
std::vector<at::Tensor> run_backward(const Dims& d, const Inputs& in, const at::Tensor& u, const at::Tensor& hsave,
                                     const at::Tensor& dy) {
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.scalar_type() == at::kFloat && dy.is_contiguous(), "dy must match u");
  TORCH_CHECK(hsave.numel() == d.batch * d.groups * d.P * d.chunks * d.N, "hsave does not match the inputs");
  const Split split(d, 8);
  at::Tensor du = at::empty_like(u), ddelta = at::empty({d.batch, d.groups, d.P, d.L}, u.options());
  at::Tensor dA = at::zeros({d.batch, d.groups, d.P, d.N}, u.options());
  at::Tensor dD = at::zeros({d.batch, d.groups, d.P}, u.options()), dbias = at::zeros_like(dD);
  at::Tensor dBp = at::empty({d.batch, d.groups, split.per_group, d.L, d.N}, u.options()), dCp = at::empty_like(dBp);
  const Grads out{du.data_ptr<float>(),  ddelta.data_ptr<float>(), dA.data_ptr<float>(),   dBp.data_ptr<float>(),
                  dCp.data_ptr<float>(), dD.data_ptr<float>(),     dbias.data_ptr<float>()};
  const float* hp = hsave.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  dispatch_nv(d.N, [&](auto nv) {
    for_each_task(d, split, [&](int64_t b, int64_t g, int64_t s, int64_t p0, int64_t p1) {
      backward_task<decltype(nv)::value>(d, b, g, s, p0, p1, split.per_group, in, hp, gp, out);
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
  return run_forward(d, inputs(u, delta, A, Bm, Cm, D, bias, softplus), u, save_states);
}

// Plain scan. Returns (du, ddelta, dA, dBm, dCm, dD, dbias).
std::vector<at::Tensor> scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                      const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                      const at::Tensor& bias, bool softplus, const at::Tensor& hsave,
                                      const at::Tensor& dy) {
  const Dims d = check_plain(u, delta, A, Bm, Cm, D, bias);
  return run_backward(d, inputs(u, delta, A, Bm, Cm, D, bias, softplus), u, hsave, dy);
}

// The vectors this build uses: "AVX-512" (the fused kernel; the plain one stays at 8 lanes), "AVX2+FMA" or
// "portable C++, no AVX2".
std::string simd_name() { return VMU_AVX512 ? "AVX-512" : (VMU_AVX2 ? "AVX2+FMA" : "portable C++, no AVX2"); }

// The machine's ceiling for the fused kernel: state updates per second of the forward step's arithmetic (exp2 of
// dl * A, the state FMA, the C readout) on register-resident data at its vector width, all threads, 4 independent
// channels each.
double probe_updates_per_second(int64_t steps) {
  using S = Simd<kWide>;
  using V = S::V;
  constexpr int kCh = 4;
  const int64_t threads = at::get_num_threads();
  std::vector<float> sink(threads * kWide);
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t th = begin; th < end; ++th) {
      // every channel and half has its own A, so that no exp is shared (the compiler would merge equal ones)
      V h[kCh][2], a2[kCh][2], y[kCh], dt = S::set1(0.01f);
      const V bu = S::set1(0.001f), cv = S::set1(0.5f), step = S::set1(1e-7f);
      for (int c = 0; c < kCh; ++c) {
        h[c][0] = h[c][1] = S::set1(0.1f * c);
        a2[c][0] = S::set1(-1.4f - 0.1f * c);
        a2[c][1] = S::set1(-2.9f - 0.1f * c);
        y[c] = S::zero();
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
      vstore(sink.data() + th * kWide, y[0]);
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(threads * steps * kCh * 2 * kWide) / seconds;
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
  m.def("cross_scan_forward", &vmu::cross_scan_forward, "fused SS2D cross-scan + selective scan + merge forward");
  m.def("cross_scan_backward", &vmu::cross_scan_backward, "fused SS2D cross-scan + selective scan + merge backward");
  m.def("gated_norm_forward", &vmu::gated_norm_forward, "SS2D out_norm and silu gate forward");
  m.def("gated_norm_backward", &vmu::gated_norm_backward, "SS2D out_norm and silu gate backward");
  m.def("transpose_copy", &vmu::transpose_copy, "x.t().contiguous() of a float32 matrix on torch's threads");
  m.def("simd_name", &simd_name, "the vector instructions this build uses");
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for runs in this build");
  m.def("probe_updates_per_second", &probe_updates_per_second, "peak state updates/s of the step arithmetic");
}
