// The KvTransport conformance suite (STYLE R12): one set of cases, instantiated once per
// transport. A test binary includes suite_support.h, defines its factories, then
//   #define KVB_SUITE_TYPES FactoryA, FactoryB, …
//   #define KVB_SUITE_TAGS "[transport][suite]"   (GPU binaries add [gpu])
// and includes this header. A factory is a struct with
//   static constexpr const char* kName;
//   static constexpr bool kInjectable;   // honours SuiteOptions' chunk hooks and delays
//   static void require_available();     // exits 77 with one line when the hardware is missing
//   static Pair make(const SuiteOptions&);                       // two unconnected endpoints
//   static std::unique_ptr<Buffer> buffer(Role side, size_t n);  // memory that side can register
// Cases check what kv_transport.h promises: round trips (sizes, real KV slices of stories260K),
// out-of-order completion, cancellation before/during a copy and its races, destroying a Transfer
// or a handle in flight, deadlines and dead peers (UNAVAILABLE), argument checks, unique ids.
#pragma once

#include "transport/suite_support.h"

// ================================== the cases ==================================

namespace kvb::test::suite::cases {

template <class F>
void metadata_and_connect() {
  F::require_available();
  Pair p = F::make({});
  CHECK(p.sharer->role() == Role::kSharer);
  CHECK(p.receiver->role() == Role::kReceiver);
  CHECK(p.sharer->name() == p.receiver->name());
  CHECK(p.sharer->connection().in_progress());
  // Malformed, and another transport's, metadata.
  CHECK(p.sharer->connect("nonsense").code() == StatusCode::kInvalidArgument);
  auto ms = p.sharer->metadata();
  REQUIRE(ms.ok());
  CHECK(!ms->empty());
  // The same role on both sides.
  Pair q = F::make({});
  auto qs = q.sharer->metadata();
  REQUIRE(qs.ok());
  CHECK(p.sharer->connect(*qs).code() == StatusCode::kFailedPrecondition);
  connect(p);
  const auto until = Clock::now() + 20s;
  while (p.receiver->connection().in_progress() && Clock::now() < until) std::this_thread::sleep_for(1ms);
  CHECK(p.receiver->connection().done());
  CHECK(p.receiver->connect(*ms).code() == StatusCode::kFailedPrecondition);  // once only
}

template <class F>
void round_trip_sizes() {
  F::require_available();
  const std::vector<size_t> sizes = {1, 7, 4096, 65537, (size_t(1) << 20) + 3, size_t(5) << 20};
  size_t total = 0;
  for (size_t n : sizes) total += n;
  Pair p = F::make({});
  auto src = F::buffer(Role::kSharer, total);
  auto dst = F::buffer(Role::kReceiver, total);
  const std::vector<char> data = random_bytes(total, 7);
  src->write(0, data.data(), total);
  MemoryHandle hs = must_register(*p.sharer, *src);
  MemoryHandle hr = must_register(*p.receiver, *dst);
  connect(p);
  std::vector<Transfer> sends, recvs;
  size_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    sends.push_back(must_post(p.sharer->post_send(hs, off, sizes[i], 100 + i)));
    recvs.push_back(must_post(p.receiver->post_recv(hr, off, sizes[i], 100 + i)));
    off += sizes[i];
  }
  for (auto& t : recvs) require_done(t);
  for (auto& t : sends) require_done(t);
  CHECK(dst->all() == data);
  // Final states stay final; ids are distinct.
  CHECK(recvs[0].poll().done());
  std::set<transport::TransferId> ids;
  for (auto* v : {&sends, &recvs}) {
    for (auto& t : *v) ids.insert(t.id());
  }
  CHECK(ids.size() == 2 * sizes.size());
}

// Real caches: stories260K's K/V slices travel one transfer each into a cache of another
// capacity, which then continues the sequence exactly like the sharer's own cache.
template <class F>
void kv_cache_slices() {
  F::require_available();
  Stories& st = stories();
  const std::vector<int32_t> prompt =
      st.model->tokenizer->encode("Once upon a time, there was a little girl named Lily. She loved to play.", {true, false});
  std::vector<float> ref_logits;
  std::unique_ptr<KvCache> sharer_cache = prefill(prompt, 128, &ref_logits);
  const uint32_t n = uint32_t(sharer_cache->n_tokens());

  for (const uint32_t chunk : {0u, 7u}) {
    INFO(fmt::format("chunk_tokens {}", chunk));
    // The receiver's cache: another capacity; cells [0, n) reserved, filled by the transfers.
    auto rc = st.runner->new_cache(96);
    REQUIRE(rc.ok());
    std::unique_ptr<KvCache> receiver_cache = std::move(rc).value();
    auto cells = receiver_cache->plan_append(int32_t(n));
    REQUIRE(cells.ok());
    auto plan = transport::plan_kv_slices(sharer_cache->layout(), n, std::nullopt, chunk);
    REQUIRE(plan.ok());
    Pair p = F::make({});
    const KvRegion sr = transport::cache_region(*sharer_cache);
    const KvRegion rr = transport::cache_region(*receiver_cache);
    auto src = F::buffer(Role::kSharer, sr.bytes);
    auto dst = F::buffer(Role::kReceiver, rr.bytes);
    src->write(0, sr.ptr, sr.bytes);
    MemoryHandle hs = must_register(*p.sharer, *src);
    MemoryHandle hr = must_register(*p.receiver, *dst);
    connect(p);
    std::vector<Transfer> sends, recvs;
    for (const transport::KvSlice& s : *plan) {
      auto a = transport::slice_bytes(*sharer_cache, s);
      auto b = transport::slice_bytes(*receiver_cache, s);
      REQUIRE(a.ok());
      REQUIRE(b.ok());
      REQUIRE(a->bytes == b->bytes);
      recvs.push_back(must_post(p.receiver->post_recv(hr, b->offset, b->bytes, s.tag)));
      sends.push_back(must_post(p.sharer->post_send(hs, a->offset, a->bytes, s.tag)));
    }
    // Layer by layer, as a consumer would take them.
    for (auto& t : recvs) require_done(t);
    for (auto& t : sends) require_done(t);
    dst->read(0, rr.ptr, rr.bytes);
    receiver_cache->commit_append(*cells, sharer_cache->tokens());
    for (int32_t l = 0; l < sharer_cache->layout().n_layer; ++l) {
      for (const bool v : {false, true}) {
        const Tensor a = v ? sharer_cache->v_used(l) : sharer_cache->k_used(l);
        const Tensor b = v ? receiver_cache->v_used(l) : receiver_cache->k_used(l);
        REQUIRE(a.nbytes() == b.nbytes());
        CHECK(std::memcmp(a.data, b.data, a.nbytes()) == 0);
      }
    }
    // The received cache continues the sequence exactly as the sharer's own.
    const int32_t next = 42;
    std::vector<float> la(ref_logits.size()), lb(ref_logits.size());
    REQUIRE(st.runner->forward(*sharer_cache, std::span<const int32_t>(&next, 1), la).ok());
    REQUIRE(st.runner->forward(*receiver_cache, std::span<const int32_t>(&next, 1), lb).ok());
    CHECK(la == lb);
    REQUIRE(sharer_cache->truncate(int32_t(n)).ok());
  }
}

template <class F>
void out_of_order() {
  F::require_available();
  Pair p = F::make({});
  if (!p.sharer->caps().any_order) {
    SUCCEED(fmt::format("{}: matches in posting order by contract (caps().any_order false)", F::kName));
    return;
  }
  constexpr size_t kN = 8, kSize = 3000;
  auto src = F::buffer(Role::kSharer, kN * kSize);
  auto dst = F::buffer(Role::kReceiver, kN * kSize);
  const std::vector<char> data = random_bytes(kN * kSize, 11);
  src->write(0, data.data(), data.size());
  MemoryHandle hs = must_register(*p.sharer, *src);
  MemoryHandle hr = must_register(*p.receiver, *dst);
  // Recvs first, in reverse; sends in order; half of them before connect().
  std::vector<Transfer> recvs, sends;
  for (size_t i = kN; i-- > 0;) recvs.push_back(must_post(p.receiver->post_recv(hr, i * kSize, kSize, 500 + i)));
  for (size_t i = 0; i < kN / 2; ++i) sends.push_back(must_post(p.sharer->post_send(hs, i * kSize, kSize, 500 + i)));
  connect(p);
  for (size_t i = kN / 2; i < kN; ++i) sends.push_back(must_post(p.sharer->post_send(hs, i * kSize, kSize, 500 + i)));
  for (auto& t : recvs) require_done(t);
  for (auto& t : sends) require_done(t);
  CHECK(dst->all() == data);

  // A recv posted for a tag the sharer has not sent yet completes when it does, while others run.
  auto late = must_post(p.receiver->post_recv(hr, 0, kSize, 900));
  auto other_r = must_post(p.receiver->post_recv(hr, kSize, kSize, 901));
  auto other_s = must_post(p.sharer->post_send(hs, kSize, kSize, 901));
  require_done(other_r);
  CHECK(late.poll().in_progress());
  auto late_s = must_post(p.sharer->post_send(hs, 0, kSize, 900));
  require_done(late);
  require_done(late_s);
  require_done(other_s);
}

template <class F>
void argument_checks() {
  F::require_available();
  Pair p = F::make({});
  Pair q = F::make({});
  auto b = F::buffer(Role::kSharer, 4096);
  MemoryHandle h = must_register(*p.sharer, *b);
  MemoryHandle foreign = must_register(*q.sharer, *b);
  CHECK(p.sharer->post_send(foreign, 0, 16, 1).status().code() == StatusCode::kInvalidArgument);
  CHECK(p.sharer->post_send(MemoryHandle(), 0, 16, 1).status().code() == StatusCode::kInvalidArgument);
  CHECK(p.sharer->post_send(h, 4000, 200, 1).status().code() == StatusCode::kOutOfRange);
  CHECK(p.sharer->post_send(h, 0, 0, 1).status().code() == StatusCode::kInvalidArgument);
  CHECK(p.sharer->register_memory(KvRegion{}).status().code() == StatusCode::kInvalidArgument);
  // A memory kind the transport does not move.
  KvRegion other = b->region();
  other.is_device = !other.is_device;
  other.device = other.is_device ? 0 : -1;
  if (!p.sharer->supports(other.kind())) {
    CHECK(p.sharer->register_memory(other).status().code() == StatusCode::kUnimplemented);
  }
  {
    auto t = must_post(p.sharer->post_send(h, 0, 16, 1));
    CHECK(p.sharer->post_send(h, 16, 16, 1).status().code() == StatusCode::kAlreadyExists);
    CHECK(p.sharer->post_send(h, 16, 16, 2).ok());  // another tag (destroyed at once: cancelled)
  }
  if (!p.sharer->caps().bidirectional) {
    CHECK(p.sharer->post_recv(h, 0, 16, 3).status().code() == StatusCode::kUnimplemented);
  }
  p.sharer->abort(unavailable("the test aborted it"));
  const auto after = p.sharer->post_send(h, 0, 16, 4);
  INFO(after.status().to_string());
  CHECK(!after.ok());
  // NCCL aborted its communicator already, when the Transfers above were destroyed in flight.
  if (p.sharer->caps().any_order) CHECK(after.status().code() == StatusCode::kUnavailable);
  CHECK(p.sharer->connection().error());
}

// A send cancelled before anything matched: CANCELLED here, and the peer's recv for that tag ends
// CANCELLED ("peer: …"): a notice takes the send's place. NCCL instead aborts the endpoint.
template <class F>
void cancel_before_match() {
  F::require_available();
  Pair p = F::make({});
  auto src = F::buffer(Role::kSharer, 8192);
  auto dst = F::buffer(Role::kReceiver, 8192);
  src->write(0, random_bytes(8192, 3).data(), 8192);
  MemoryHandle hs = must_register(*p.sharer, *src);
  MemoryHandle hr = must_register(*p.receiver, *dst);
  auto s = must_post(p.sharer->post_send(hs, 0, 4096, 7));
  s.cancel();
  s.cancel();  // idempotent
  require_error(s, StatusCode::kCancelled);
  if (!p.sharer->caps().any_order) {
    // Ordered (NCCL): the pairing is poisoned, so the endpoint aborts itself; it stays unusable.
    const auto until = Clock::now() + 5s;
    while (!p.sharer->connection().error() && Clock::now() < until) std::this_thread::sleep_for(1ms);
    CHECK(p.sharer->connection().status.code() == StatusCode::kAborted);
    CHECK(p.sharer->post_send(hs, 0, 16, 8).status().code() == StatusCode::kAborted);
    return;
  }
  connect(p);
  auto r = must_post(p.receiver->post_recv(hr, 0, 4096, 7, PostOptions{Clock::now() + 2s}));
  const PollResult pr = finish(r);
  INFO(pr.status.to_string());
  CHECK(pr.status.code() == StatusCode::kCancelled);  // "peer: …": the notice took the send's place
  // The tag is free again, and the next pair with it goes through.
  auto s2 = must_post(p.sharer->post_send(hs, 4096, 4096, 7));
  auto r2 = must_post(p.receiver->post_recv(hr, 4096, 4096, 7));
  require_done(r2);
  require_done(s2);
}

// Cancel and destroy while the mover is inside a copy (frozen by the gate).
template <class F>
void cancel_during_copy() {
  F::require_available();
  if (!F::kInjectable) {
    SUCCEED(fmt::format("{}: no chunk hooks on real hardware", F::kName));
    return;
  }
  constexpr size_t kSize = size_t(1) << 20;
  for (const bool destroy : {false, true}) {
    for (const bool receiver_side : {false, true}) {
      Gate gate;
      SuiteOptions so;
      so.chunk = 64 << 10;
      so.timeout = 1500ms;  // NCCL's peer learns of the abort only by its deadline
      so.on_chunk = [&] { gate.pass(); };
      Pair p = F::make(so);
      auto src = F::buffer(Role::kSharer, kSize);
      auto dst = F::buffer(Role::kReceiver, kSize);
      const std::vector<char> data = random_bytes(kSize, 5);
      src->write(0, data.data(), kSize);
      MemoryHandle hs = must_register(*p.sharer, *src);
      MemoryHandle hr = must_register(*p.receiver, *dst);
      connect(p);
      gate.close();
      auto s = must_post(p.sharer->post_send(hs, 0, kSize, 1));
      auto r = must_post(p.receiver->post_recv(hr, 0, kSize, 1));
      REQUIRE(gate.wait_arrival(1));  // the mover is frozen after its first chunk
      Transfer& victim = receiver_side ? r : s;
      Transfer& other = receiver_side ? s : r;
      if (destroy) {
        // The destructor blocks until the mover let go of the memory: run it beside the gate.
        std::atomic<bool> returned{false};
        std::thread t([&] {
          Transfer gone = std::move(victim);
          gone = Transfer();
          returned = true;
        });
        std::this_thread::sleep_for(20ms);
        gate.open();
        t.join();
        CHECK(returned);
      } else {
        victim.cancel();
        gate.open();
        const PollResult v = finish(victim);
        INFO(v.status.to_string());
        // kDone is allowed when the copy finished before the cancel was seen (a DMA cannot stop).
        CHECK((v.done() || v.status.code() == StatusCode::kCancelled));
      }
      const PollResult o = finish(other);
      INFO(o.status.to_string());
      CHECK(!o.in_progress());
      if (o.done() && !other.is_send()) CHECK(dst->all() == data);
      // Nothing writes into the receiver's memory once its transfer is gone or final.
      const std::vector<char> snap = dst->all();
      std::this_thread::sleep_for(30ms);
      CHECK(dst->all() == snap);
    }
  }
}

// Races: cancels and destructions at random moments against a slowed mover; every transfer ends,
// and a recv that reports kDone holds exactly the sent bytes.
template <class F>
void cancel_races() {
  F::require_available();
  if (!F::kInjectable) {
    SUCCEED(fmt::format("{}: no injectable delays on real hardware", F::kName));
    return;
  }
  std::mt19937 rng(1234);
  constexpr size_t kSize = 256 << 10;
  SuiteOptions so;
  so.chunk = 16 << 10;
  so.chunk_delay = 50us;
  so.timeout = 2000ms;
  Pair p = F::make(so);
  auto src = F::buffer(Role::kSharer, kSize);
  auto dst = F::buffer(Role::kReceiver, kSize);
  const std::vector<char> data = random_bytes(kSize, 9);
  src->write(0, data.data(), kSize);
  MemoryHandle hs = must_register(*p.sharer, *src);
  MemoryHandle hr = must_register(*p.receiver, *dst);
  connect(p);
  int n_done = 0, n_cancelled = 0;
  const bool ordered = !p.sharer->caps().any_order;
  for (uint64_t i = 0; i < 40; ++i) {
    auto s = must_post(p.sharer->post_send(hs, 0, kSize, i));
    auto r = must_post(p.receiver->post_recv(hr, 0, kSize, i));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    switch (rng() % 4) {
      case 0: s.cancel(); break;
      case 1: r.cancel(); break;
      case 2: r = Transfer(); break;  // destroyed in flight
      default: break;
    }
    const PollResult ps = finish(s);
    const PollResult pr = r.valid() ? finish(r) : PollResult{TransferState::kError, cancelled("destroyed")};
    REQUIRE(!ps.in_progress());
    REQUIRE(!pr.in_progress());
    if (pr.done()) {
      ++n_done;
      REQUIRE(dst->all() == data);
    } else {
      ++n_cancelled;
    }
    std::vector<char> zero(kSize, 0);
    dst->write(0, zero.data(), kSize);
    if (ordered && !(ps.done() && pr.done())) break;  // NCCL: a cancel aborts the communicator
  }
  INFO(fmt::format("{} done, {} cancelled", n_done, n_cancelled));
  CHECK(n_done + n_cancelled > 0);
}

template <class F>
void deadline_unavailable() {
  F::require_available();
  Pair p = F::make({});
  auto b = F::buffer(Role::kReceiver, 4096);
  auto sb = F::buffer(Role::kSharer, 4096);
  MemoryHandle hr = must_register(*p.receiver, *b);
  MemoryHandle hs = must_register(*p.sharer, *sb);
  connect(p);
  const auto t0 = Clock::now();
  auto r = must_post(p.receiver->post_recv(hr, 0, 4096, 42, PostOptions{Clock::now() + 150ms}));
  const PollResult pr = finish(r);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  INFO(pr.status.to_string());
  CHECK(pr.status.code() == StatusCode::kUnavailable);
  CHECK(ms >= 140);
  CHECK(ms < 5000);
  // A send nobody receives expires the same way (polled only after its deadline) — except on a
  // stream, where a send is done once its bytes are in the stream.
  auto s = must_post(p.sharer->post_send(hs, 0, 4096, 43, PostOptions{Clock::now() + 50ms}));
  std::this_thread::sleep_for(300ms);
  const PollResult ps = finish(s);
  INFO(ps.status.to_string());
  CHECK(!ps.in_progress());
  if (ps.error()) CHECK(ps.status.code() == StatusCode::kUnavailable);
}

template <class F>
void dead_peer_unavailable() {
  F::require_available();
  Pair p = F::make({});
  auto b = F::buffer(Role::kReceiver, 4096);
  MemoryHandle hr = must_register(*p.receiver, *b);
  connect(p);
  auto r = must_post(p.receiver->post_recv(hr, 0, 4096, 9, PostOptions{Clock::now() + 20s}));
  std::this_thread::sleep_for(20ms);
  const auto t0 = Clock::now();
  if (p.kill_sharer) {
    p.kill_sharer();
  } else {
    p.sharer.reset();
  }
  const PollResult pr = finish(r);
  INFO(pr.status.to_string());
  CHECK(pr.status.code() == StatusCode::kUnavailable);
  CHECK(Clock::now() - t0 < 10s);  // well before the deadline
  CHECK(p.receiver->post_recv(hr, 0, 16, 10).status().code() == StatusCode::kUnavailable);
}

// A handle destroyed under transfers cancels them; a transport destroyed under transfers and
// handles leaves them inert.
template <class F>
void lifetimes() {
  F::require_available();
  {
    Pair p = F::make({});
    auto b = F::buffer(Role::kReceiver, 4096);
    auto hr = std::make_unique<MemoryHandle>(must_register(*p.receiver, *b));
    connect(p);
    auto r = must_post(p.receiver->post_recv(*hr, 0, 4096, 1));
    hr.reset();
    require_error(r, StatusCode::kCancelled);
  }
  Pair p = F::make({});
  auto b = F::buffer(Role::kReceiver, 4096);
  auto sb = F::buffer(Role::kSharer, 4096);
  MemoryHandle hr = must_register(*p.receiver, *b);
  MemoryHandle hs = must_register(*p.sharer, *sb);
  connect(p);
  auto r = must_post(p.receiver->post_recv(hr, 0, 4096, 2));
  auto s = must_post(p.sharer->post_send(hs, 0, 2048, 3, PostOptions{Clock::now() + 2s}));
  p.receiver.reset();
  require_error(r, StatusCode::kCancelled);
  CHECK(r.poll().error());
  hr.reset();  // after its transport: fine
  const PollResult ps = finish(s);
  CHECK(!ps.in_progress());
}

// Many transfers from several threads at once.
template <class F>
void concurrent_posts() {
  F::require_available();
  Pair p = F::make({});
  if (!p.sharer->caps().any_order) {
    SUCCEED(fmt::format("{}: posting from several threads needs tag matching", F::kName));
    return;
  }
  constexpr int kThreads = 4, kPer = 25;
  constexpr size_t kSize = 2048;
  const size_t total = size_t(kThreads * kPer) * kSize;
  auto src = F::buffer(Role::kSharer, total);
  auto dst = F::buffer(Role::kReceiver, total);
  const std::vector<char> data = random_bytes(total, 21);
  src->write(0, data.data(), total);
  MemoryHandle hs = must_register(*p.sharer, *src);
  MemoryHandle hr = must_register(*p.receiver, *dst);
  connect(p);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Transfer> mine;
      for (int i = 0; i < kPer; ++i) {
        const size_t k = size_t(t * kPer + i);
        auto a = p.receiver->post_recv(hr, k * kSize, kSize, k);
        auto c = p.sharer->post_send(hs, k * kSize, kSize, k);
        if (!a.ok() || !c.ok()) {
          ++failures;
          continue;
        }
        mine.push_back(std::move(a).value());
        mine.push_back(std::move(c).value());
      }
      for (auto& x : mine) {
        if (!x.wait(Clock::now() + 30s).done()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(dst->all() == data);
}

}  // namespace kvb::test::suite::cases

// One TEST_CASE per case, each instantiated for every factory of KVB_SUITE_TYPES.
#define KVB_TRANSPORT_SUITE_CASE(fn, title)                                             \
  TEMPLATE_TEST_CASE("transport suite: " title, KVB_SUITE_TAGS, KVB_SUITE_TYPES) {      \
    ::kvb::test::suite::cases::fn<TestType>();                                          \
  }

KVB_TRANSPORT_SUITE_CASE(metadata_and_connect, "metadata and connect and connection state")
KVB_TRANSPORT_SUITE_CASE(round_trip_sizes, "round trips of many sizes")
KVB_TRANSPORT_SUITE_CASE(kv_cache_slices, "stories260K KV slices into a cache that continues the sequence")
KVB_TRANSPORT_SUITE_CASE(out_of_order, "out-of-order posts and completions")
KVB_TRANSPORT_SUITE_CASE(argument_checks, "argument checks and abort")
KVB_TRANSPORT_SUITE_CASE(cancel_before_match, "cancel before a match")
KVB_TRANSPORT_SUITE_CASE(cancel_during_copy, "cancel or destroy a Transfer during its copy")
KVB_TRANSPORT_SUITE_CASE(cancel_races, "cancellation races with injected delays")
KVB_TRANSPORT_SUITE_CASE(deadline_unavailable, "deadline -> UNAVAILABLE")
KVB_TRANSPORT_SUITE_CASE(dead_peer_unavailable, "dead peer -> UNAVAILABLE")
KVB_TRANSPORT_SUITE_CASE(lifetimes, "handles and transports destroyed under transfers")
KVB_TRANSPORT_SUITE_CASE(concurrent_posts, "concurrent posts from several threads")
