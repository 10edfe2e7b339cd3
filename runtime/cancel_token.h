// CancelToken: one request's "the client went away" flag, shared by its reactor, its context pulls
// and its engine task.
//
// The reactor calls cancel() from OnCancel (or when it finishes early); the engine loop polls
// cancelled() between steps; a blocking peer pull registers a hook (ClientContext::TryCancel) so
// that cancel() interrupts it at once. Threading: all methods are thread-safe; the hook runs
// under the token's mutex, on the thread that calls cancel() (or set_hook(), when the token is
// already cancelled), so a hook must be short and must not call back into the token.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

namespace kvb::runtime {

class CancelToken {
 public:
  void cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_.exchange(true)) return;
    if (hook_) hook_();
  }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Installs the hook run by cancel(); runs it now if the token is already cancelled. The owner
  // of whatever the hook touches must clear_hook() before destroying it.
  void set_hook(std::function<void()> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    hook_ = std::move(hook);
    if (cancelled_ && hook_) hook_();
  }
  void clear_hook() {
    std::lock_guard<std::mutex> lock(mu_);
    hook_ = nullptr;
  }

 private:
  std::mutex mu_;
  std::atomic<bool> cancelled_{false};
  std::function<void()> hook_;
};

// A hook installed for this object's lifetime (set_hook now, clear_hook when it dies), e.g.
// ClientContext::TryCancel around one blocking call.
class ScopedCancelHook {
 public:
  ScopedCancelHook(CancelToken& token, std::function<void()> hook) : token_(token) { token_.set_hook(std::move(hook)); }
  ~ScopedCancelHook() { token_.clear_hook(); }
  ScopedCancelHook(const ScopedCancelHook&) = delete;
  ScopedCancelHook& operator=(const ScopedCancelHook&) = delete;

 private:
  CancelToken& token_;
};

using CancelTokenPtr = std::shared_ptr<CancelToken>;

}  // namespace kvb::runtime
