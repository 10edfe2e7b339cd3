#include "transport/transfer_core.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

namespace kvb::transport::detail {

namespace {

class CoreRegistration final : public RegistrationImpl {
 public:
  CoreRegistration(std::shared_ptr<Core> core, uint64_t id, const KvRegion& region)
      : RegistrationImpl(core.get(), id, region), core_(std::move(core)) {}
  ~CoreRegistration() override { core_->deregister(id()); }

 private:
  std::shared_ptr<Core> core_;
};

class CoreTransfer final : public TransferImpl {
 public:
  CoreTransfer(std::shared_ptr<Core> core, std::shared_ptr<Op> op)
      : TransferImpl(op->id, op->tag, op->bytes, op->is_send), core_(std::move(core)), op_(std::move(op)) {}
  ~CoreTransfer() override { core_->release(*op_); }

  PollResult poll() override { return core_->poll(*op_); }
  void cancel() override { core_->cancel(*op_); }
  PollResult wait(Clock::time_point until) override { return core_->wait(*op_, until); }
  void* native_event() const override { return core_->native_event(*op_); }

 private:
  std::shared_ptr<Core> core_;
  std::shared_ptr<Op> op_;
};

PollResult result_of(const Op& op) {
  if (!op.final()) return {};
  return {op.state, op.status};
}

}  // namespace

std::string Op::describe() const {
  return fmt::format("{} of {} B, tag {:#x} (transfer {})", is_send ? "send" : "recv", bytes, tag, id.to_string());
}

Core::Core(const TransportCaps& caps, Role role, Clock::duration default_timeout, std::shared_ptr<Sync> sync)
    : caps_(caps), role_(role), default_timeout_(default_timeout), sync_(std::move(sync)) {}

// ============================== facade calls ==============================

Result<MemoryHandle> Core::register_memory(const KvRegion& region) {
  if (region.ptr == nullptr || region.bytes == 0) {
    return invalid_argument(fmt::format("{}: cannot register a null or empty region", caps_.name));
  }
  if (!caps_.supports(region.kind())) {
    return unimplemented(fmt::format("{} does not move {} memory", caps_.name, memory_kind_name(region.kind())));
  }
  if (region.is_device && region.device < 0) {
    return invalid_argument(fmt::format("{}: a device region needs its device ordinal", caps_.name));
  }
  std::lock_guard<std::mutex> lock(mu());
  if (!broken_.ok()) return broken_;
  Registration reg;
  reg.region = region;
  KVB_RETURN_IF_ERROR(check_region_locked(region, reg));
  const uint64_t id = ++next_reg_id_;
  regs_.emplace(id, std::move(reg));
  return MemoryHandle(std::make_unique<CoreRegistration>(shared_from_this(), id, region));
}

Result<Transfer> Core::post(bool is_send, const MemoryHandle& mem, size_t offset, size_t bytes, uint64_t tag,
                            const PostOptions& opt) {
  const char* dir = is_send ? "post_send" : "post_recv";
  if (!mem.valid() || mem.impl()->owner() != this) {
    return invalid_argument(fmt::format("{} {}: the memory handle was not registered with this transport", caps_.name, dir));
  }
  if (bytes == 0) return invalid_argument(fmt::format("{} {}: zero bytes", caps_.name, dir));
  if (!caps_.bidirectional && is_send != (role_ == Role::kSharer)) {
    return unimplemented(fmt::format("{} moves data from the sharer to the receiver only: no {} on the {}", caps_.name,
                                     dir, role_name(role_)));
  }
  auto op = std::make_shared<Op>();
  op->core = this;
  op->id = TransferId::generate();
  op->tag = tag;
  op->bytes = bytes;
  op->is_send = is_send;
  op->reg_id = mem.id();
  op->offset = offset;
  op->deadline = opt.deadline ? *opt.deadline : Clock::now() + default_timeout_;
  op->ready_event = opt.ready_event;

  std::lock_guard<std::mutex> lock(mu());
  if (!broken_.ok()) return broken_;
  const auto reg = regs_.find(mem.id());
  if (reg == regs_.end()) return invalid_argument(fmt::format("{} {}: the memory handle was deregistered", caps_.name, dir));
  const KvRegion& r = reg->second.region;
  if (offset > r.bytes || bytes > r.bytes - offset) {
    return out_of_range(fmt::format("{} {}: bytes [{}, {}) outside the {}-byte region", caps_.name, dir, offset,
                                    offset + bytes, r.bytes));
  }
  if (tags_in_flight_.count({is_send, tag})) {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("{} {}: tag {:#x} is already in flight on this endpoint", caps_.name, dir, tag));
  }
  op->ptr = static_cast<char*>(r.ptr) + offset;
  KVB_RETURN_IF_ERROR(check_post_locked(*op));
  live_.emplace(op->id, op);
  tags_in_flight_.insert({is_send, tag});
  on_post_locked(op);
  return Transfer(std::make_unique<CoreTransfer>(shared_from_this(), op));
}

PollResult Core::connection() const {
  std::lock_guard<std::mutex> lock(mu());
  return conn_;
}

void Core::abort(const Status& reason) {
  std::unique_lock<std::mutex> lock(mu());
  fail_all_locked(reason.ok() ? cancelled("the transport was aborted") : reason);
  wait_locked(lock, [&] { return live_.empty(); });
}

// ============================== transfer calls ==============================

PollResult Core::poll(Op& op) {
  std::lock_guard<std::mutex> lock(mu());
  if (!op.final()) {
    refresh_locked(op);
    expire_locked(op, Clock::now());
  }
  return result_of(op);
}

void Core::cancel(Op& op) {
  std::lock_guard<std::mutex> lock(mu());
  if (op.final() || !op.pending.ok()) return;
  op.user_cancelled = true;
  fail_locked(op, cancelled(fmt::format("{}: cancelled", op.describe())));
}

PollResult Core::wait(Op& op, Clock::time_point until) {
  std::unique_lock<std::mutex> lock(mu());
  wait_locked(
      lock,
      [&] {
        if (!op.final()) {
          refresh_locked(op);
          expire_locked(op, Clock::now());
        }
        return op.final();
      },
      until);
  return result_of(op);
}

void Core::release(Op& op) {
  std::unique_lock<std::mutex> lock(mu());
  if (op.final()) return;
  if (op.pending.ok()) {
    op.user_cancelled = true;
    fail_locked(op, cancelled(fmt::format("{}: the Transfer was destroyed in flight", op.describe())));
  }
  wait_locked(lock, [&] {
    if (!op.final()) refresh_locked(op);
    return op.final();
  });
}

void Core::deregister(uint64_t reg_id) {
  std::unique_lock<std::mutex> lock(mu());
  const auto reg = regs_.find(reg_id);
  if (reg == regs_.end()) return;
  const auto uses = [&] {
    return std::any_of(live_.begin(), live_.end(), [&](const auto& kv) { return kv.second->reg_id == reg_id; });
  };
  std::vector<std::shared_ptr<Op>> victims;
  for (const auto& [id, op] : live_) {
    if (op->reg_id == reg_id) victims.push_back(op);
  }
  for (const auto& op : victims) {
    op->user_cancelled = true;
    fail_locked(*op, cancelled(fmt::format("{}: its memory handle was destroyed", op->describe())));
  }
  wait_locked(lock, [&] { return !uses(); });
  on_deregister(reg_id, reg->second, lock);
  regs_.erase(reg_id);
}

void* Core::native_event(const Op& op) const {
  std::lock_guard<std::mutex> lock(mu());
  return op.native_event;
}

// ============================== helpers ==============================

void Core::fail_locked(Op& op, Status st) {
  if (op.final() || !op.pending.ok()) return;
  op.pending = std::move(st);
  on_fail_locked(op);
  if (!op.busy && !op.final()) finish_locked(op, op.pending);
}

void Core::finish_locked(Op& op, Status st) {
  KVB_ASSERT(!op.busy, "a transfer was finished while its memory may still be in use: " + op.describe());
  if (op.final()) return;
  op.state = st.ok() ? TransferState::kDone : TransferState::kError;
  op.status = std::move(st);
  tags_in_flight_.erase({op.is_send, op.tag});
  const std::shared_ptr<Op> keep = find_live_locked(op.id);  // op may be held by live_ alone
  live_.erase(op.id);
  on_finish_locked(op);
  cv().notify_all();
}

void Core::settle_locked(Op& op) {
  if (!op.busy && !op.final() && !op.pending.ok()) finish_locked(op, op.pending);
}

Status Core::timeout_status(const Op& op) const {
  return unavailable(fmt::format("{} {}: not completed by its deadline (the peer did not post it, died or hung)",
                                 caps_.name, op.describe()));
}

bool Core::expire_locked(Op& op, Clock::time_point now) {
  if (op.final() || !op.pending.ok() || now < op.deadline) return false;
  fail_locked(op, timeout_status(op));
  return true;
}

void Core::expire_due_locked(Clock::time_point now) {
  std::vector<std::shared_ptr<Op>> due;
  for (const auto& [id, op] : live_) {
    if (op->pending.ok() && now >= op->deadline) due.push_back(op);
  }
  for (const auto& op : due) expire_locked(*op, now);
}

void Core::drain_locked(std::unique_lock<std::mutex>& lock) {
  fail_all_locked(cancelled(fmt::format("{}: the transport was destroyed", caps_.name)));
  wait_locked(lock, [&] { return live_.empty(); });
}

void Core::fail_all_locked(const Status& reason) {
  if (broken_.ok()) broken_ = reason;
  if (!conn_.error()) conn_ = {TransferState::kError, broken_};
  on_abort_locked(broken_);
  std::vector<std::shared_ptr<Op>> all;
  for (const auto& [id, op] : live_) all.push_back(op);
  for (const auto& op : all) fail_locked(*op, reason);
  cv().notify_all();
}

void Core::set_connected_locked() {
  if (!conn_.error()) conn_ = {TransferState::kDone, Status::Ok()};
  cv().notify_all();
}

bool Core::wait_locked(std::unique_lock<std::mutex>& lock, const std::function<bool()>& pred,
                       Clock::time_point until) {
  for (;;) {
    if (pred()) return true;
    const Clock::time_point now = Clock::now();
    if (now >= until) return false;
    // Device completions are not signalled on the condition variable: wake up to look.
    cv().wait_until(lock, std::min(until, now + poll_interval_));
  }
}

std::shared_ptr<Op> Core::find_live_locked(const TransferId& id) const {
  const auto it = live_.find(id);
  return it == live_.end() ? nullptr : it->second;
}

// ============================== byte packing ==============================

void ByteWriter::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i) out_.push_back(char((v >> (8 * i)) & 0xff));
}

void ByteWriter::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) out_.push_back(char((v >> (8 * i)) & 0xff));
}

void ByteWriter::str(std::string_view s) {
  u32(uint32_t(s.size()));
  out_.append(s);
}

bool ByteReader::take(size_t n, std::string_view& s) {
  if (failed_ || in_.size() - pos_ < n) {
    failed_ = true;
    return false;
  }
  s = in_.substr(pos_, n);
  pos_ += n;
  return true;
}

bool ByteReader::u8(uint8_t& v) {
  std::string_view b;
  if (!take(1, b)) return false;
  v = uint8_t(b[0]);
  return true;
}

bool ByteReader::u32(uint32_t& v) {
  std::string_view b;
  if (!take(4, b)) return false;
  v = 0;
  for (size_t i = 0; i < 4; ++i) v |= uint32_t(uint8_t(b[i])) << (8 * i);
  return true;
}

bool ByteReader::u64(uint64_t& v) {
  std::string_view b;
  if (!take(8, b)) return false;
  v = 0;
  for (size_t i = 0; i < 8; ++i) v |= uint64_t(uint8_t(b[i])) << (8 * i);
  return true;
}

bool ByteReader::str(std::string& s, size_t max_len) {
  uint32_t n = 0;
  if (!u32(n)) return false;
  if (n > max_len) {
    failed_ = true;
    return false;
  }
  std::string_view b;
  if (!take(n, b)) return false;
  s.assign(b);
  return true;
}

bool ByteReader::raw(size_t n, std::string_view& s) { return take(n, s); }

}  // namespace kvb::transport::detail
