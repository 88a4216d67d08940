// SS2D's output norm and gate as one pass over the map (the ``cpu_fused`` path), forward and backward:
//
//   out = (yn * weight + bias) * silu(z),    yn = (y - mean) * rstd,    rstd = 1 / sqrt(var + eps)
//
// over rows of P channels (mean and biased variance per row, as nn.LayerNorm). Forward reads y and z once and writes
// out with the rows' mean and rstd; backward reads dout, y and z once, recomputes yn and the gate, and writes dy and
// dz, with weight's and bias's gradients summed per thread and then over threads. In PyTorch the same is LayerNorm,
// SiLU and a product forward and five maps read and written backward. P is a multiple of 16 (whole vectors in either
// build). sigmoid(z) is 1 / (1 + w) or w / (1 + w) with w = exp(-|z|), as in the step sizes' softplus.

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace vmu {
namespace {

constexpr int64_t W = kWide;
using S = Simd<kWide>;
using V = S::V;
constexpr int64_t kRowsPerTask = 16;

float lane_sum(V v) {
  alignas(64) float lanes[W];
  vstore(lanes, v);
  float s = 0.0f;
  for (int64_t j = 0; j < W; ++j) s += lanes[j];
  return s;
}

// The row's mean and 1 / sqrt(biased variance + eps), in two passes over the row (it stays in L1).
void moments(const float* y, int64_t P, float eps, float* mean, float* rstd) {
  V acc = S::zero();
  for (int64_t c = 0; c < P; c += W) acc = vadd(acc, S::load(y + c));
  const float m = lane_sum(acc) / static_cast<float>(P);
  const V neg_mean = S::set1(-m);
  acc = S::zero();
  for (int64_t c = 0; c < P; c += W) {
    const V d = vadd(S::load(y + c), neg_mean);
    acc = vfma(d, d, acc);
  }
  *mean = m;
  *rstd = 1.0f / std::sqrt(lane_sum(acc) / static_cast<float>(P) + eps);
}

}  // namespace

std::vector<at::Tensor> gated_norm_forward(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                           const at::Tensor& bias, double eps) {
  check_floats({&y, &z, &weight, &bias});
  const int64_t P = y.size(-1);
  TORCH_CHECK(P % 16 == 0, "the gated norm kernel needs a multiple of 16 channels, got ", P);
  TORCH_CHECK(z.sizes() == y.sizes() && weight.numel() == P && bias.numel() == P,
              "z must be shaped like y, weight and bias (P,)");
  const int64_t rows = y.numel() / P;
  at::Tensor out = at::empty_like(y);
  at::Tensor mean = at::empty({rows}, y.options());
  at::Tensor rstd = at::empty({rows}, y.options());
  const float *py = y.data_ptr<float>(), *pz = z.data_ptr<float>();
  const float *pw = weight.data_ptr<float>(), *pb = bias.data_ptr<float>();
  float *po = out.data_ptr<float>(), *pm = mean.data_ptr<float>(), *pr = rstd.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *yr = py + r * P, *zr = pz + r * P;
      float* orow = po + r * P;
      moments(yr, P, e, pm + r, pr + r);
      const V vr = S::set1(pr[r]), vshift = S::set1(-pm[r] * pr[r]);
      for (int64_t c = 0; c < P; c += W) {
        const V yn = vfma(S::load(yr + c), vr, vshift);
        const V zc = S::load(zr + c);
        const V a = vfma(yn, S::load(pw + c), S::load(pb + c));
        vstore(orow + c, vmul(a, vmul(zc, vsigmoid(zc))));
      }
    }
  });
  return {out, mean, rstd};
}

std::vector<at::Tensor> gated_norm_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& z,
                                            const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                                            const at::Tensor& rstd) {
  check_floats({&dout, &y, &z, &weight, &bias, &mean, &rstd});
  const int64_t P = y.size(-1);
  TORCH_CHECK(P % 16 == 0 && dout.sizes() == y.sizes() && z.sizes() == y.sizes(), "dout, y, z must be alike");
  const int64_t rows = y.numel() / P;
  TORCH_CHECK(mean.numel() == rows && rstd.numel() == rows, "mean and rstd must have one value a row");
  at::Tensor dy = at::empty_like(y);
  at::Tensor dz = at::empty_like(z);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  at::Tensor partial = at::zeros({threads, 2, P}, y.options());  // each thread's weight and bias gradients
  const float *pg = dout.data_ptr<float>(), *py = y.data_ptr<float>(), *pz = z.data_ptr<float>();
  const float *pw = weight.data_ptr<float>(), *pb = bias.data_ptr<float>();
  const float *pm = mean.data_ptr<float>(), *pr = rstd.data_ptr<float>();
  float *pdy = dy.data_ptr<float>(), *pdz = dz.data_ptr<float>(), *pp = partial.data_ptr<float>();
  const V one = S::set1(1.0f), minus_one = S::set1(-1.0f);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    float* dw = pp + (at::get_thread_num() % threads) * 2 * P;
    float* db = dw + P;
    for (int64_t r = begin; r < end; ++r) {
      const float *gr = pg + r * P, *yr = py + r * P, *zr = pz + r * P;
      float *dyr = pdy + r * P, *dzr = pdz + r * P;
      const V vr = S::set1(pr[r]), vshift = S::set1(-pm[r] * pr[r]);
      V s1 = S::zero(), s2 = S::zero();
      for (int64_t c = 0; c < P; c += W) {  // dz; dxhat into dy for now, its row sums, weight and bias gradients
        const V yn = vfma(S::load(yr + c), vr, vshift);
        const V zc = S::load(zr + c), g = S::load(gr + c), w = S::load(pw + c);
        const V sg = vsigmoid(zc);
        const V a = vfma(yn, w, S::load(pb + c));
        const V silu_grad = vmul(sg, vfma(zc, vfma(sg, minus_one, one), one));  // s (1 + z (1 - s))
        vstore(dzr + c, vmul(vmul(g, a), silu_grad));
        const V dyhat = vmul(g, vmul(zc, sg));
        vstore(dw + c, vfma(dyhat, yn, S::load(dw + c)));
        vstore(db + c, vadd(dyhat, S::load(db + c)));
        const V dxhat = vmul(dyhat, w);
        vstore(dyr + c, dxhat);
        s1 = vadd(s1, dxhat);
        s2 = vfma(dxhat, yn, s2);
      }
      const float inv_p = 1.0f / static_cast<float>(P);
      const V neg_m1 = S::set1(-lane_sum(s1) * inv_p), neg_m2 = S::set1(-lane_sum(s2) * inv_p);
      for (int64_t c = 0; c < P; c += W) {  // dy = rstd (dxhat - mean(dxhat) - yn mean(dxhat yn))
        const V yn = vfma(S::load(yr + c), vr, vshift);
        const V centred = vfma(yn, neg_m2, vadd(S::load(dyr + c), neg_m1));
        vstore(dyr + c, vmul(vr, centred));
      }
    }
  });
  at::Tensor sums = partial.sum(0);
  return {dy, dz, sums[0].contiguous(), sums[1].contiguous()};
}

}  // namespace vmu
