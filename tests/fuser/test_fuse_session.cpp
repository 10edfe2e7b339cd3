// FuseSession (fuser/fuse_session.h) on real caches: stories260K (sharer) and aidreams260K
// (receiver), a synthetic fuser with alternating gates (fuse_fixture.h). The session's output,
// decoded over a copy of the receiver's cache, must equal Fuser::fuse applied directly to each
// gated-on slice, whatever the interleaving of the inputs; output flows layer by layer; and a
// stream from another pair, of another length or with a bad checksum fails with its code, for good.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>

#include "fuse_fixture.h"

namespace kvb::fuser {
namespace {

using fixture::WireStream;
using Side = FuseSession::Side;

using fixture::must;
using fixture::must_ok;

// Feeds one input stream message by message: header, chunks, trailer.
class Feeder {
 public:
  Feeder(Side side, const WireStream& s) : side_(side), s_(s) {}
  bool done() const { return pos_ == s_.chunks.size() + 2; }
  Status next(FuseSession& session) {
    const size_t i = pos_++;
    if (i == 0) return session.add_header(side_, s_.header);
    if (i <= s_.chunks.size()) return session.add_chunk(side_, view_of(s_.chunks[i - 1]));
    return session.add_trailer(side_, s_.trailer);
  }

 private:
  Side side_;
  const WireStream& s_;
  size_t pos_ = 0;
};

// Takes everything the session has ready.
void drain(FuseSession& session, WireStream& out, bool& have_trailer) {
  if (auto h = session.take_header()) out.header = *h;
  KvWireChunk c;
  while (session.next_chunk(c)) out.chunks.push_back(c);
  if (auto t = session.take_trailer()) {
    out.trailer = *t;
    have_trailer = true;
  }
}

enum class Order { kSharerFirst, kReceiverFirst, kAlternate };

// Runs one whole fusion and returns the fused stream.
WireStream run(const WireStream& sharer, const WireStream& receiver, Order order) {
  FuseSession session(*fixture::pair().fuser, {});
  Feeder s(Side::kSharer, sharer), r(Side::kReceiver, receiver);
  WireStream out;
  bool have_trailer = false;
  bool sharer_turn = order != Order::kReceiverFirst;
  while (!s.done() || !r.done()) {
    Feeder& f = (sharer_turn && !s.done()) || r.done() ? s : r;
    must_ok(f.next(session));
    drain(session, out, have_trailer);
    if (order == Order::kAlternate) sharer_turn = !sharer_turn;
  }
  REQUIRE(have_trailer);
  REQUIRE(session.done());
  return out;
}

bool same_stream(const WireStream& a, const WireStream& b) {
  if (a.header.tokens != b.header.tokens || a.header.layers != b.header.layers ||
      a.header.n_chunks != b.header.n_chunks || a.header.total_bytes != b.header.total_bytes ||
      a.chunks.size() != b.chunks.size() || a.trailer.digest != b.trailer.digest) {
    return false;
  }
  for (size_t i = 0; i < a.chunks.size(); ++i) {
    const KvWireChunk &x = a.chunks[i], &y = b.chunks[i];
    if (x.layer != y.layer || x.is_v != y.is_v || x.token_begin != y.token_begin || x.token_count != y.token_count ||
        x.xxh3 != y.xxh3 || x.payload != y.payload) {
      return false;
    }
  }
  return true;
}

bool same_slice(const KvCache& a, const KvCache& b, int32_t layer, bool is_v) {
  const Tensor x = is_v ? a.v_used(layer) : a.k_used(layer);
  const Tensor y = is_v ? b.v_used(layer) : b.k_used(layer);
  return x.nbytes() == y.nbytes() && std::memcmp(x.data, y.data, x.nbytes()) == 0;
}

TEST_CASE("fuse session: the output is Fuser::fuse of each gated-on slice", "[fuser][model]") {
  if (!fixture::have_models()) return;
  const fixture::FusePair& p = fixture::pair();
  Fuser& f = *p.fuser;
  // Alternating gates over 4 receiver layers: 0 both, 1 K, 2 V, 3 none; receiver t <- sharer t + 1.
  REQUIRE(p.plan.receiver == KvLayerSet{{0, 1}, {0, 2}});
  REQUIRE(p.plan.sharer == KvLayerSet{{1, 2}, {1, 3}});

  const WireStream sharer = fixture::sharer_stream(), receiver = fixture::receiver_stream();
  // Gated-off slices are not required as input.
  REQUIRE(sharer.header.n_slices() == 4);
  REQUIRE(receiver.header.n_slices() == 4);

  FuseSession session(f, {});
  Feeder s(Side::kSharer, sharer), r(Side::kReceiver, receiver);
  WireStream out;
  bool have_trailer = false;
  while (!s.done()) must_ok(s.next(session));
  while (!r.done()) must_ok(r.next(session));
  drain(session, out, have_trailer);
  REQUIRE(have_trailer);
  REQUIRE(session.done());
  CHECK(session.stats().n_tokens == uint32_t(p.n_tokens));
  CHECK(session.stats().slices_fused == 4);
  CHECK(session.stats().bytes_received > 0);

  // Gated-off slices are not in the output.
  REQUIRE(out.header.layers == p.plan.receiver);
  for (const KvWireChunk& c : out.chunks) CHECK(p.plan.receiver.contains(c.layer, c.is_v));
  REQUIRE(out.header.tokens == std::vector<int32_t>(p.receiver_cache->tokens().begin(), p.receiver_cache->tokens().end()));
  REQUIRE(out.header.model == p.receiver_id);

  const std::unique_ptr<KvCache> fused = fixture::apply_fused(out);
  const std::unique_ptr<KvCache> reference = fixture::reference_fused();
  REQUIRE(fixture::same_cells(*fused, *reference));
  for (int32_t t = 0; t < 4; ++t) {
    for (const bool is_v : {false, true}) {
      INFO("receiver layer " << t << (is_v ? " V" : " K"));
      // Fused slices changed; the others are the receiver's own.
      CHECK(same_slice(*fused, *p.receiver_cache, t, is_v) != p.plan.receiver.contains(uint32_t(t), is_v));
    }
  }
}

TEST_CASE("fuse session: every interleaving gives the same output", "[fuser][model]") {
  if (!fixture::have_models()) return;
  const WireStream baseline = run(fixture::sharer_stream(), fixture::receiver_stream(), Order::kSharerFirst);
  REQUIRE(fixture::same_cells(*fixture::apply_fused(baseline), *fixture::reference_fused()));

  SECTION("receiver first") {
    CHECK(same_stream(run(fixture::sharer_stream(), fixture::receiver_stream(), Order::kReceiverFirst), baseline));
  }
  SECTION("alternating message by message") {
    CHECK(same_stream(run(fixture::sharer_stream(), fixture::receiver_stream(), Order::kAlternate), baseline));
  }
  SECTION("small chunks, alternating") {
    const WireStream s = fixture::sharer_stream(5), r = fixture::receiver_stream(3);
    REQUIRE(s.chunks.size() > 4);
    CHECK(same_stream(run(s, r, Order::kAlternate), baseline));
    CHECK(same_stream(run(s, r, Order::kReceiverFirst), baseline));
  }
}

TEST_CASE("fuse session: a layer's output is ready once its two inputs are", "[fuser][model]") {
  if (!fixture::have_models()) return;
  const fixture::FusePair& p = fixture::pair();
  const WireStream sharer = fixture::sharer_stream(), receiver = fixture::receiver_stream();
  // Receiver layer 0's K is the first slice of the receiver stream, and its sharer slice (layer 1 K)
  // the first of the sharer stream: one chunk each at the default chunk size.
  REQUIRE(p.fuser->sharer_layer(0) == 1);
  REQUIRE((receiver.chunks[0].layer == 0 && !receiver.chunks[0].is_v && receiver.chunks[1].layer == 0));
  REQUIRE((sharer.chunks[0].layer == 1 && !sharer.chunks[0].is_v));

  FuseSession session(*p.fuser, {});
  must_ok(session.add_header(Side::kSharer, sharer.header));
  must_ok(session.add_header(Side::kReceiver, receiver.header));
  REQUIRE(session.take_header().has_value());
  KvWireChunk c;
  must_ok(session.add_chunk(Side::kReceiver, view_of(receiver.chunks[0])));
  CHECK_FALSE(session.next_chunk(c));  // the sharer's slice is still missing
  must_ok(session.add_chunk(Side::kSharer, view_of(sharer.chunks[0])));
  REQUIRE(session.next_chunk(c));
  CHECK(c.layer == 0);
  CHECK_FALSE(c.is_v);
  CHECK_FALSE(session.next_chunk(c));  // layer 0 V needs the receiver's next chunk
  CHECK_FALSE(session.take_trailer().has_value());
  CHECK(session.stats().slices_fused == 1);
}

TEST_CASE("fuse session: streams from another pair are FAILED_PRECONDITION", "[fuser][model]") {
  if (!fixture::have_models()) return;
  const fixture::FusePair& p = fixture::pair();
  FuseSession session(*p.fuser, {});
  SECTION("another model") {
    KvWireHeader h = fixture::receiver_stream().header;  // the receiver's stream on the sharer side
    REQUIRE_CODE(session.add_header(Side::kSharer, h), StatusCode::kFailedPrecondition);
  }
  SECTION("a wrong fingerprint") {
    KvWireHeader h = fixture::sharer_stream().header;
    h.model.fingerprint ^= 1;
    REQUIRE_CODE(session.add_header(Side::kSharer, h), StatusCode::kFailedPrecondition);
  }
  SECTION("every slice instead of the plan's") {
    const WireStream all = fixture::encode(*p.sharer_cache, p.sharer_id, std::nullopt);
    REQUIRE_CODE(session.add_header(Side::kSharer, all.header), StatusCode::kFailedPrecondition);
  }
  SECTION("a gated-off receiver slice") {
    KvLayerSet more = p.plan.receiver;
    more.k.push_back(3);
    const WireStream r = fixture::encode(*p.receiver_cache, p.receiver_id, more);
    REQUIRE_CODE(session.add_header(Side::kReceiver, r.header), StatusCode::kFailedPrecondition);
  }
  // Sticky: the right header is refused now with the same error.
  const Status again = session.add_header(Side::kSharer, fixture::sharer_stream().header);
  CHECK(again.code() == StatusCode::kFailedPrecondition);
  CHECK_FALSE(session.take_header().has_value());
}

TEST_CASE("fuse session: streams over different positions are INVALID_ARGUMENT", "[fuser][model]") {
  if (!fixture::have_models()) return;
  fixture::FusePair& p = fixture::pair();
  std::unique_ptr<KvCache> shorter = must(p.sharer_runner->new_cache(p.sharer_cache->n_ctx()));
  must_ok(shorter->copy_from(*p.backend, *p.sharer_cache, p.n_tokens - 1));
  const WireStream s = fixture::encode(*shorter, p.sharer_id, p.plan.sharer);

  FuseSession session(*p.fuser, {});
  must_ok(session.add_header(Side::kReceiver, fixture::receiver_stream().header));
  REQUIRE_CODE(session.add_header(Side::kSharer, s.header), StatusCode::kInvalidArgument);
  REQUIRE_CODE(session.add_header(Side::kSharer, fixture::sharer_stream().header), StatusCode::kInvalidArgument);
}

TEST_CASE("fuse session: a corrupted chunk is DATA_LOSS, and the session stays failed", "[fuser][model]") {
  if (!fixture::have_models()) return;
  const fixture::FusePair& p = fixture::pair();
  const WireStream sharer = fixture::sharer_stream(), receiver = fixture::receiver_stream();
  KvWireChunk bad = sharer.chunks[0];
  bad.payload[bad.payload.size() / 2] ^= 0x40;

  FuseSession session(*p.fuser, {});
  must_ok(session.add_header(Side::kSharer, sharer.header));
  must_ok(session.add_header(Side::kReceiver, receiver.header));
  REQUIRE_CODE(session.add_chunk(Side::kSharer, view_of(bad)), StatusCode::kDataLoss);
  const Status first = session.add_chunk(Side::kSharer, view_of(bad));
  // Every later call returns the first error, valid input included; nothing comes out.
  REQUIRE_CODE(session.add_chunk(Side::kSharer, view_of(sharer.chunks[0])), StatusCode::kDataLoss);
  REQUIRE_CODE(session.add_chunk(Side::kReceiver, view_of(receiver.chunks[0])), StatusCode::kDataLoss);
  REQUIRE_CODE(session.add_trailer(Side::kReceiver, receiver.trailer), StatusCode::kDataLoss);
  CHECK(session.add_chunk(Side::kReceiver, view_of(receiver.chunks[1])).message() == first.message());
  KvWireChunk c;
  CHECK_FALSE(session.take_header().has_value());
  CHECK_FALSE(session.next_chunk(c));
  CHECK_FALSE(session.take_trailer().has_value());
  CHECK_FALSE(session.done());
}

}  // namespace
}  // namespace kvb::fuser
