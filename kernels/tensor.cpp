#include "kernels/tensor.h"

#include <fmt/format.h>

namespace kvb {

std::string Tensor::describe() const {
  std::string s(dtype_name(dtype));
  for (int i = 0; i < n_dims; ++i) s += fmt::format("[{}]", shape[size_t(i)]);
  return s;
}

}  // namespace kvb
