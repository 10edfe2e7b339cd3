#include "transport/kv_transport.h"

#include <fmt/format.h>

#include <atomic>
#include <random>

namespace kvb::transport {

std::string_view memory_kind_name(MemoryKind k) { return k == MemoryKind::kHost ? "host" : "device"; }

std::string_view role_name(Role r) { return r == Role::kSharer ? "sharer" : "receiver"; }

namespace {

struct IdSeed {
  uint64_t hi, lo;
  IdSeed() {
    std::random_device rd;
    auto r64 = [&] { return (uint64_t(rd()) << 32) ^ uint64_t(rd()); };
    hi = r64();
    lo = r64();
  }
};

}  // namespace

TransferId TransferId::generate() {
  static const IdSeed seed;
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
  TransferId id;
  id.lo = seed.lo + n;
  id.hi = seed.hi + (id.lo < n ? 1 : 0);  // carry: a 128-bit seed + counter
  if (id.is_null()) return generate();
  return id;
}

std::string TransferId::to_string() const { return fmt::format("{:016x}{:016x}", hi, lo); }

const TransferId& Transfer::id() const {
  static const TransferId kNull;
  return impl_ ? impl_->id() : kNull;
}

PollResult Transfer::poll() {
  if (!impl_) return {TransferState::kError, failed_precondition("poll() on an empty Transfer")};
  return impl_->poll();
}

void Transfer::cancel() {
  if (impl_) impl_->cancel();
}

PollResult Transfer::wait(Clock::time_point until) {
  if (!impl_) return {TransferState::kError, failed_precondition("wait() on an empty Transfer")};
  return impl_->wait(until);
}

}  // namespace kvb::transport
