// Entry points of the fused SS2D kernels (cross_scan_cpu.cpp, gated_norm_cpu.cpp, transpose_cpu.cpp; bound in
// scan_cpu.cpp) and the input checks the kernel files use.
#pragma once

#include <torch/extension.h>

#include <initializer_list>
#include <vector>

namespace vmu {

// Every tensor is a contiguous float32 CPU tensor.
void check_floats(std::initializer_list<const at::Tensor*> ts);

// The scan parameters: A (G, P, N) with N in {8, 16, 24, 32}, D and bias (G, P) or empty.
void check_params(int64_t groups, int64_t P, int64_t N, const at::Tensor& A, const at::Tensor& D,
                  const at::Tensor& bias);

// Fused cross-scan, step-size projection, scan and cross-merge of SS2D (softplus step sizes). u (batch, H, W, P)
// channels-last; x_dbl (batch, H * W, 4, R + 2 N): each direction's dts, B and C at each row-major position;
// dtw (4, P, R); Alog (4, P, N), SS2D's A_logs (the state matrix is A = -exp(Alog)). Returns (y (batch, H, W, P),
// hsave).
std::vector<at::Tensor> cross_scan_forward(const at::Tensor& u, const at::Tensor& xdbl, const at::Tensor& dtw,
                                           const at::Tensor& Alog, const at::Tensor& D, const at::Tensor& bias,
                                           bool save_states);

// Its backward given dy (batch, H, W, P). Returns (du (batch, H, W, P), dx_dbl (batch, H * W, 4, R + 2 N) like
// x_dbl, ddtw (4, P, R), dAlog (4, P, N), dD (4, P), dbias (4, P)).
std::vector<at::Tensor> cross_scan_backward(const at::Tensor& u, const at::Tensor& xdbl, const at::Tensor& dtw,
                                            const at::Tensor& Alog, const at::Tensor& D, const at::Tensor& bias,
                                            const at::Tensor& hsave, const at::Tensor& dy);

// SS2D's out_norm and gate (gated_norm_cpu.cpp): out = LayerNorm(y) * silu(z) over the last dimension P (a multiple
// of 16). Returns (out, mean, rstd), mean and rstd one value a row.
std::vector<at::Tensor> gated_norm_forward(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                           const at::Tensor& bias, double eps);

// Its backward given dout. Returns (dy, dz, dweight, dbias).
std::vector<at::Tensor> gated_norm_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& z,
                                            const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                                            const at::Tensor& rstd);

// x.t().contiguous() for a contiguous float32 matrix x, on torch's intra-op threads (transpose_cpu.cpp).
at::Tensor transpose_copy(const at::Tensor& x);

}  // namespace vmu
