#include "agent/transfer/transfer_sessions.h"

#include <fmt/format.h>

#include <condition_variable>
#include <thread>

#include "agent/transfer/transport_choice.h"
#include "rpc/logging.h"
#include "transport/byte_pipe.h"

namespace kvb::agent {

using transport::Clock;

namespace {

// How often a waiting worker looks at its close flag and its control pipe.
constexpr auto kPollStep = std::chrono::milliseconds(20);
// A receiver that got every byte may close before its last acknowledgements (cuda-ipc's DONE)
// have crossed the control stream: the sends get this long to see them.
constexpr auto kCloseGrace = std::chrono::seconds(2);

}  // namespace

struct TransferSessions::Session {
  transport::TransferId id;
  SharerSessionSpec spec;
  std::vector<transport::KvSlice> plan;
  std::vector<transport::ByteRange> ranges;  // plan[i]'s bytes in the cache's region
  // Destroyed in this order by the worker: transfers (in run), handle, endpoint, pipes.
  std::unique_ptr<transport::KvTransport> endpoint;
  transport::MemoryHandle handle;
  std::unique_ptr<transport::BytePipe> watched;     // NCCL: the session's end of the control pipe
  std::unique_ptr<transport::BytePipe> stream_end;  // until take_stream()

  std::mutex mu;
  std::condition_variable cv;
  bool close_requested = false;  // guarded by mu
  bool receiver_ok = false;      // guarded by mu: the close said the receiver has everything
  Status close_reason;           // guarded by mu
  bool finished = false;         // guarded by mu
  std::thread worker;

  bool closing() {
    std::lock_guard<std::mutex> lock(mu);
    return close_requested;
  }
};

TransferSessions::TransferSessions(TransportFactory& factory, size_t max_sessions)
    : factory_(factory), max_sessions_(max_sessions) {}

TransferSessions::~TransferSessions() {
  std::map<transport::TransferId, std::unique_ptr<Session>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.swap(sessions_);
  }
  for (auto& [id, s] : all) {
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->close_requested = true;
      s->close_reason = unavailable("the sharing agent is shutting down");
    }
    s->cv.notify_all();
  }
  for (auto& [id, s] : all) s->worker.join();
}

std::vector<std::unique_ptr<TransferSessions::Session>> TransferSessions::reap_locked() {
  std::vector<std::unique_ptr<Session>> done;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    bool finished;
    {
      std::lock_guard<std::mutex> lock(it->second->mu);
      finished = it->second->finished;
    }
    if (finished) {
      done.push_back(std::move(it->second));
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  return done;
}

size_t TransferSessions::active() {
  std::vector<std::unique_ptr<Session>> done;
  size_t n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = reap_locked();
    n = sessions_.size();
  }
  for (auto& s : done) s->worker.join();
  return n;
}

Result<OpenedSession> TransferSessions::open(SharerSessionSpec spec) {
  {
    std::vector<std::unique_ptr<Session>> done;
    bool full;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done = reap_locked();
      full = sessions_.size() >= max_sessions_;
    }
    for (auto& s : done) s->worker.join();
    if (full)
      return resource_exhausted(fmt::format("{} cache transfers are open, the most this agent serves", max_sessions_));
  }
  if (spec.cache == nullptr || spec.cache->n_tokens() == 0) return invalid_argument("the cache holds no tokens");

  auto s = std::make_unique<Session>();
  s->id = transport::TransferId::generate();
  const KvCache& cache = *spec.cache;
  KVB_ASSIGN_OR_RETURN(s->plan, transport::plan_kv_slices(cache.layout(), uint32_t(cache.n_tokens()), spec.layers,
                                                          spec.chunk_tokens));
  for (const transport::KvSlice& slice : s->plan) {
    KVB_ASSIGN_OR_RETURN(const transport::ByteRange r, transport::slice_bytes(cache, slice));
    s->ranges.push_back(r);
  }

  transport::MemoryPipePair pipes = transport::make_memory_pipe();
  s->stream_end = std::move(pipes.b);
  std::unique_ptr<transport::BytePipe> control;
  if (endpoint_owns_control(spec.kind)) {
    control = std::move(pipes.a);
  } else {
    s->watched = std::move(pipes.a);
  }
  KVB_ASSIGN_OR_RETURN(s->endpoint, factory_.create(spec.kind, transport::Role::kSharer, std::move(control)));
  KVB_ASSIGN_OR_RETURN(s->handle, s->endpoint->register_memory(factory_.region(spec.kind, cache)));
  KVB_ASSIGN_OR_RETURN(std::string metadata, s->endpoint->metadata());
  KVB_RETURN_IF_ERROR(s->endpoint->connect(spec.receiver_metadata).with_context("the receiver's endpoint"));

  OpenedSession out{s->id, std::move(metadata), s->plan};
  s->spec = std::move(spec);
  // The worker starts under mu_, so that whoever finds the session in the table can join it.
  std::lock_guard<std::mutex> lock(mu_);
  Session& ref = *s;
  ref.worker = std::thread([this, &ref] { run(ref); });
  sessions_.emplace(ref.id, std::move(s));
  return out;
}

Result<std::unique_ptr<transport::BytePipe>> TransferSessions::take_stream(const transport::TransferId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = sessions_.find(id);
  if (it == sessions_.end()) return not_found(fmt::format("no open cache transfer {}", id.to_string()));
  Session& s = *it->second;
  std::lock_guard<std::mutex> slock(s.mu);
  if (s.finished) return not_found(fmt::format("cache transfer {} has ended", id.to_string()));
  if (s.stream_end == nullptr) {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("cache transfer {} already has its control stream", id.to_string()));
  }
  return std::move(s.stream_end);
}

Status TransferSessions::close(const transport::TransferId& id, const Status& receiver_outcome) {
  std::unique_ptr<Session> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = sessions_.find(id);
    if (it == sessions_.end()) return Status::Ok();
    s = std::move(it->second);
    sessions_.erase(it);
  }
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->close_requested = true;
    s->receiver_ok = receiver_outcome.ok();
    s->close_reason = receiver_outcome.ok()
                          ? cancelled("the receiver closed the transfer before it ended")
                          : Status(receiver_outcome.code(), "the receiver gave up: " + receiver_outcome.message());
  }
  s->cv.notify_all();
  s->worker.join();
  return Status::Ok();
}

// The worker: post every send, wait for them (watching the close flag and the control stream),
// hold the endpoint until the close or the timeout, then tear down.
void TransferSessions::run(Session& s) {
  const auto t0 = Clock::now();
  const auto deadline = t0 + s.spec.timeout;
  Status outcome;
  uint64_t bytes = 0;
  {
    std::vector<transport::Transfer> sends;
    sends.reserve(s.plan.size());
    transport::PostOptions po;
    po.deadline = deadline;
    for (size_t i = 0; i < s.plan.size() && outcome.ok(); ++i) {
      auto x = s.endpoint->post_send(s.handle, s.ranges[i].offset, s.ranges[i].bytes, s.plan[i].tag, po);
      if (x.ok()) {
        sends.push_back(std::move(x).value());
        bytes += s.ranges[i].bytes;
      } else {
        outcome = x.status();
      }
    }
    std::optional<Clock::time_point> grace_end;
    for (size_t next = 0; outcome.ok() && next < sends.size();) {
      if (s.closing()) {
        std::lock_guard<std::mutex> lock(s.mu);
        if (!grace_end) grace_end = Clock::now() + (s.receiver_ok ? kCloseGrace : Clock::duration(0));
        if (Clock::now() >= *grace_end) {
          outcome = s.close_reason;
          break;
        }
      }
      if (s.watched) {
        auto m = s.watched->recv(Clock::now());
        if (!m.ok()) {
          outcome = unavailable("the receiver's control stream ended before the transfer did");
          break;
        }
      }
      const transport::PollResult r = sends[next].wait(Clock::now() + kPollStep);
      if (r.done()) {
        ++next;
      } else if (r.error()) {
        outcome = r.status;
      }
    }
    if (!outcome.ok()) s.endpoint->abort(outcome);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    rpc::log_event(outcome.ok() ? spdlog::level::info : spdlog::level::warn, "cache transfer sent",
                   {{"transfer", s.id.to_string()},
                    {"cache", s.spec.cache_id},
                    {"transport", transport::transport_name(s.spec.kind)},
                    {"peer", s.spec.peer},
                    {"slices", int64_t(s.plan.size())},
                    {"bytes", int64_t(bytes)},
                    {"ms", secs * 1e3},
                    {"code", status_code_name(outcome.code())},
                    {"error", outcome.message()}});
  }  // the sends end here (finished, or cancelled by the abort)

  // Hold the endpoint (a cuda-ipc receiver may still map the cache) until the close or expiry.
  {
    std::unique_lock<std::mutex> lock(s.mu);
    const bool closed = s.cv.wait_for(lock, s.spec.timeout, [&] { return s.close_requested; });
    if (!closed) {
      rpc::log_event(spdlog::level::warn, "cache transfer expired without a close",
                     {{"transfer", s.id.to_string()}, {"cache", s.spec.cache_id}});
    }
  }
  // A control pipe no stream ever took carried nothing: closing it first spares the handle's
  // release from waiting for an UNMAPPED that cannot come.
  std::unique_ptr<transport::BytePipe> untaken;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    untaken = std::move(s.stream_end);
  }
  untaken.reset();
  s.handle.reset();  // cuda-ipc: UNMAP, and waits for the receiver's UNMAPPED
  s.endpoint.reset();
  s.watched.reset();
  s.spec.cache.reset();
  std::lock_guard<std::mutex> lock(s.mu);
  s.finished = true;
}

}  // namespace kvb::agent
