// AlignedBuffer: an owned, 64-byte (2 MiB for large blocks) aligned block of host memory
// (move-only RAII).
#pragma once

#include <cstddef>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace kvb::cpu {

inline constexpr size_t kHostAlignment = 64;  // one cache line; also the widest SIMD load
// Buffers from this size on start 2 MiB aligned, and with HugePages::kAdvise their whole 2 MiB
// pages are advised to use transparent huge pages (the tail stays in 4 KiB pages, so no memory is
// wasted): packed weights are streamed once per token, and 4 KiB pages cost a TLB miss every 4 KiB.
// Memory that is written piecemeal after allocation (KV caches: a few cells of every layer per
// step) is better off without: the first write into each huge page zeroes all 2 MiB of it (and
// may compact memory first, with THP defrag "madvise"), so the first prompt chunk written into a
// fresh cache stalled its step for hundreds of milliseconds; with 4 KiB pages the faults follow
// the cells written.
inline constexpr size_t kHugePageBytes = size_t(2) << 20;
enum class HugePages { kAdvise, kNone };

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), align_(o.align_) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      align_ = o.align_;
    }
    return *this;
  }
  ~AlignedBuffer() { release(); }

  // Allocates `bytes` (rounded up to the alignment; at least one line) and returns false when out of
  // memory, leaving the buffer empty. Contents are uninitialized. Never throws.
  bool allocate(size_t bytes, HugePages huge = HugePages::kAdvise) {
    release();
    const size_t align = bytes >= kHugePageBytes ? kHugePageBytes : kHostAlignment;
    const size_t rounded = bytes == 0 ? kHostAlignment : (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    if (rounded < bytes) return false;  // overflow
    data_ = ::operator new(rounded, std::align_val_t(align), std::nothrow);
    if (data_ == nullptr) return false;
    align_ = align;
    size_ = bytes;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // A hint: failure is harmless.
    if (align == kHugePageBytes && huge == HugePages::kAdvise) {
      madvise(data_, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
    }
#else
    (void)huge;
#endif
    return true;
  }
  // Grows to at least `bytes`; keeps nothing. False when out of memory (the buffer is then empty).
  bool reserve(size_t bytes) { return bytes <= size_ && data_ != nullptr ? true : allocate(bytes); }

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void release() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t(align_));
    data_ = nullptr;
    size_ = 0;
  }

  void* data_ = nullptr;
  size_t size_ = 0;
  size_t align_ = kHostAlignment;
};

}  // namespace kvb::cpu
