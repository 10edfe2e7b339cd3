#include "transport/metadata.h"

#include <fmt/format.h>
#include <unistd.h>

#include <fstream>

#include "transport/transfer_core.h"

namespace kvb::transport {

namespace {

constexpr std::string_view kMagic = "KVBX";

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

std::string encode_envelope(const Envelope& e) {
  detail::ByteWriter w;
  w.raw(kMagic);
  w.u32(kMetadataVersion);
  w.str(e.transport);
  w.u8(e.role == Role::kSharer ? 0 : 1);
  w.u64(e.endpoint.hi);
  w.u64(e.endpoint.lo);
  w.u64(e.process.hi);
  w.u64(e.process.lo);
  w.str(e.host_id);
  w.str(e.body);
  return w.take();
}

Result<Envelope> decode_peer_envelope(std::string_view blob, std::string_view transport, Role my_role) {
  detail::ByteReader r(blob);
  std::string_view magic;
  uint32_t version = 0;
  if (!r.raw(kMagic.size(), magic) || magic != kMagic || !r.u32(version)) {
    return invalid_argument(fmt::format("{}: the peer's metadata is not a kvbridge transport blob", transport));
  }
  if (version != kMetadataVersion) {
    return invalid_argument(fmt::format("{}: the peer's metadata has version {}, this build reads {}", transport,
                                        version, kMetadataVersion));
  }
  Envelope e;
  uint8_t role = 0;
  if (!r.str(e.transport, 64) || !r.u8(role) || role > 1 || !r.u64(e.endpoint.hi) || !r.u64(e.endpoint.lo) ||
      !r.u64(e.process.hi) || !r.u64(e.process.lo) || !r.str(e.host_id, 256) || !r.str(e.body) || !r.done()) {
    return invalid_argument(fmt::format("{}: the peer's metadata is malformed", transport));
  }
  e.role = role == 0 ? Role::kSharer : Role::kReceiver;
  if (e.transport != transport) {
    return invalid_argument(fmt::format("{}: the peer's metadata is for transport \"{}\"", transport, e.transport));
  }
  if (e.role == my_role) {
    return failed_precondition(fmt::format("{}: both endpoints are the {}", transport, role_name(my_role)));
  }
  return e;
}

const TransferId& process_nonce() {
  static const TransferId nonce = TransferId::generate();
  return nonce;
}

const std::string& local_host_id() {
  static const std::string id = [] {
    std::ifstream f("/proc/sys/kernel/random/boot_id");
    std::string s;
    if (f && std::getline(f, s) && !trim(s).empty()) return "boot:" + trim(s);
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0') return "host:" + std::string(name);
    return std::string();
  }();
  return id;
}

}  // namespace kvb::transport
