// Tensor: a non-owning, typed view of contiguous row-major memory on one device.
//
// Shapes are written outermost first, as in the comments throughout kvbridge: a Tensor of shape
// {n_tokens, n_embd} is `[n_tokens][n_embd]`, with n_embd contiguous. Memory is owned elsewhere
// (a Buffer, an mmap, a std::vector); a Tensor never frees anything.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/dtype.h"
#include "kernels/status.h"

namespace kvb {

struct Tensor {
  DType dtype = DType::kF32;
  int n_dims = 0;
  std::array<int64_t, 4> shape{};  // shape[n_dims - 1] is the contiguous dimension
  void* data = nullptr;            // device memory of whichever backend the tensor belongs to

  static Tensor make(DType t, void* data, std::initializer_list<int64_t> dims) {
    Tensor x;
    x.dtype = t;
    x.data = data;
    for (int64_t d : dims) x.shape[size_t(x.n_dims++)] = d;
    return x;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < n_dims; ++i) n *= shape[size_t(i)];
    return n;
  }
  int64_t cols() const { return n_dims ? shape[size_t(n_dims - 1)] : 1; }  // innermost
  int64_t rows() const { return cols() ? numel() / cols() : 0; }            // product of the rest
  size_t row_nbytes() const { return row_bytes(dtype, cols()); }
  size_t nbytes() const { return size_t(rows()) * row_nbytes(); }

  template <class T>
  T* as() const { return static_cast<T*>(data); }

  // Rows [begin, begin + count) of the outermost dimension, as a view.
  Tensor slice_rows(int64_t begin, int64_t count) const {
    Tensor s = *this;
    const int64_t inner = numel() / shape[0];
    s.shape[0] = count;
    s.data = static_cast<char*>(data) + size_t(begin) * row_bytes(dtype, inner);
    return s;
  }

  // "f32[5][64]"
  std::string describe() const;
};

}  // namespace kvb
