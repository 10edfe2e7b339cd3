// AlignedBuffer: an owned, 64-byte aligned block of host memory (move-only RAII).
#pragma once

#include <cstddef>
#include <new>
#include <utility>

namespace kvb::cpu {

inline constexpr size_t kHostAlignment = 64;  // one cache line; also the widest SIMD load

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Allocates `bytes` (rounded up to the alignment; at least one line) and returns false when out of
  // memory, leaving the buffer empty. Contents are uninitialized. Never throws.
  bool allocate(size_t bytes) {
    release();
    const size_t rounded = bytes == 0 ? kHostAlignment : (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    if (rounded < bytes) return false;  // overflow
    data_ = ::operator new(rounded, std::align_val_t(kHostAlignment), std::nothrow);
    if (data_ == nullptr) return false;
    size_ = bytes;
    return true;
  }
  // Grows to at least `bytes`; keeps nothing. False when out of memory (the buffer is then empty).
  bool reserve(size_t bytes) { return bytes <= size_ && data_ != nullptr ? true : allocate(bytes); }

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <class T>
  T* as() const { return static_cast<T*>(data_); }

 private:
  void release() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t(kHostAlignment));
    data_ = nullptr;
    size_ = 0;
  }

  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvb::cpu
