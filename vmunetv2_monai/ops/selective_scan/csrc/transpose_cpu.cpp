// x.t().contiguous() for a contiguous float32 matrix on all of torch's intra-op threads. torch's own copy of a
// transposed matrix runs on one thread (copy_same_type_transpose_); linear_cpu's weight gradients transpose
// (M, K) activations with M up to batch * H * W at every training step.
//
// 8 x 8 tiles: 8 rows of x are read as vectors, transposed in registers and written as 8 rows of the result.
// Threads take blocks of kRowsPerTask rows of x (columns of the result); a tile row of a block stays in L1.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "kernels.h"
#include "simd.h"

namespace vmu {
namespace {

constexpr int64_t kRowsPerTask = 64;

#if VMU_AVX2
// out[j * out_stride + i] = in[i * in_stride + j] for i, j < 8.
inline void tile8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  vec r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = vload(in + i * in_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    vstore(out + j * out_stride, _mm256_permute2f128_ps(u[j], u[j + 4], 0x20));
    vstore(out + (j + 4) * out_stride, _mm256_permute2f128_ps(u[j], u[j + 4], 0x31));
  }
}
#else
inline void tile8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  for (int i = 0; i < 8; ++i) {
    for (int j = 0; j < 8; ++j) out[j * out_stride + i] = in[i * in_stride + j];
  }
}
#endif

}  // namespace

at::Tensor transpose_copy(const at::Tensor& x) {
  check_floats({&x});
  TORCH_CHECK(x.dim() == 2, "transpose_copy takes a matrix, got ", x.dim(), " dimensions");
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor out = at::empty({cols, rows}, x.options());
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
      const int64_t r8 = r0 + (r1 - r0) / 8 * 8, c8 = cols / 8 * 8;
      for (int64_t c = 0; c < c8; c += 8) {
        for (int64_t r = r0; r < r8; r += 8) tile8(in + r * cols + c, cols, o + c * rows + r, rows);
      }
      // the edges: rows past the last whole tile of the block, columns past the last whole tile
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = r < r8 ? c8 : 0; c < cols; ++c) o[c * rows + r] = in[r * cols + c];
      }
    }
  });
  return out;
}

}  // namespace vmu
