// kvbridge caches: the caches an agent holds, as a table, and its store's counters.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

#include "client/cli_remote.h"

namespace kvb::cli {

namespace {

// "3s", "4m", "2h", "5d"; "-" for none.
std::string human_duration_ms(int64_t ms) {
  if (ms < 0) return "-";
  const int64_t s = ms / 1000;
  if (s < 120) return fmt::format("{}s", s);
  if (s < 7200) return fmt::format("{}m", s / 60);
  if (s < 172800) return fmt::format("{}h", s / 3600);
  return fmt::format("{}d", s / 86400);
}

}  // namespace

void register_caches(CLI::App& app) {
  struct Args {
    std::string agent;
    RemoteFlags remote;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("caches", "List the caches an agent holds");
  c->add_option("--agent", a->agent, "Agent address (host:port)")->required();
  add_remote_flags(c, a->remote);
  c->callback([a] {
    auto agent = connect_or_exit(a->agent, a->remote);
    auto r = agent->list_caches();
    exit_on_error(r.status());
    const int64_t now =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    std::printf("%-32s %7s %11s %6s %6s %8s\n", "ID", "TOKENS", "BYTES", "PINNED", "IDLE", "EXPIRES");
    for (const client::v1::CacheInfo& ci : r->caches()) {
      std::printf("%-32s %7u %11s %6s %6s %8s\n", ci.cache_id().c_str(), ci.n_tokens(), human_bytes(ci.bytes()).c_str(),
                  ci.pinned() ? "yes" : "no", human_duration_ms(now - ci.last_used_unix_ms()).c_str(),
                  ci.expires_unix_ms() == 0 ? "never" : human_duration_ms(ci.expires_unix_ms() - now).c_str());
    }
    const client::v1::StoreStats& s = r->stats();
    std::printf("store: %u caches, %s of %s; hits %llu, misses %llu, evictions %llu, expirations %llu\n", s.n_caches(),
                human_bytes(s.bytes_used()).c_str(), human_bytes(s.bytes_budget()).c_str(),
                static_cast<unsigned long long>(s.hits()), static_cast<unsigned long long>(s.misses()),
                static_cast<unsigned long long>(s.evictions()), static_cast<unsigned long long>(s.expirations()));
  });
}

}  // namespace kvb::cli
