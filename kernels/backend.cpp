#include "kernels/backend.h"

#include <fmt/format.h>

namespace kvb {

Status check_matmul_shapes(const Tensor& x, std::span<const MatmulOut> outs) {
  if (x.dtype != DType::kF32 || x.n_dims != 2) {
    return invalid_argument(fmt::format("matmul: x must be f32 [n][n_in], got {}", x.describe()));
  }
  for (const MatmulOut& o : outs) {
    if (o.w == nullptr) return invalid_argument("matmul: null weight");
    if (o.w->n_in() != x.cols()) {
      return invalid_argument(
          fmt::format("matmul: x {} does not match weight [{}][{}]", x.describe(), o.w->n_out(), o.w->n_in()));
    }
    if (o.y.dtype != DType::kF32 || o.y.n_dims != 2 || o.y.shape[0] != x.shape[0] ||
        o.y.shape[1] != o.w->n_out()) {
      return invalid_argument(fmt::format("matmul: y {} must be f32 [{}][{}]", o.y.describe(), x.shape[0],
                                          o.w->n_out()));
    }
  }
  return Status::Ok();
}

}  // namespace kvb
