// kvbridge cache save|load|drop|pin: one cache of an agent, to and from snapshot files.
//
//   cache save --agent A --cache ID --out FILE [--wire f16] [--zstd]   ExportCache → snapshot file
//   cache load --agent A --file FILE                                   snapshot file → ImportCache
//   cache drop --agent A --cache ID
//   cache pin  --agent A --cache ID [--unpin]
#include <cstdio>

#include "client/cli_remote.h"

namespace kvb::cli {

namespace {

struct CacheArgs {
  std::string agent, cache, out, file;
  uint32_t chunk_tokens = 0;
  bool unpin = false;
  WireFlags wire;
  RemoteFlags remote;
};

CLI::App* add_cache_command(CLI::App* parent, const std::string& name, const std::string& help, CacheArgs& a) {
  CLI::App* c = parent->add_subcommand(name, help);
  c->add_option("--agent", a.agent, "Agent address (host:port)")->required();
  add_remote_flags(c, a.remote);
  return c;
}

}  // namespace

void register_cache(CLI::App& app) {
  auto a = std::make_shared<CacheArgs>();
  CLI::App* cache = app.add_subcommand("cache", "Save, load, drop or pin one cache of an agent");
  cache->require_subcommand(1);

  CLI::App* save = add_cache_command(cache, "save", "Export a cache to a snapshot file", *a);
  save->add_option("--cache", a->cache, "Cache id")->required();
  save->add_option("-o,--out", a->out, "Snapshot file to write (atomically)")->required();
  save->add_option("--chunk-tokens", a->chunk_tokens, "Tokens per chunk (0 = the agent's choice, ~1 MiB)");
  add_wire_flags(save, a->wire, "the snapshot");
  save->callback([a] {
    auto agent = connect_or_exit(a->agent, a->remote);
    client::ExportOptions o;
    o.dtype = a->wire.dtype();
    o.compression = a->wire.compression();
    o.chunk_tokens = a->chunk_tokens;
    o.progress = progress_reporter("export");
    auto st = agent->save_cache(a->cache, a->out, o);
    exit_on_error(st.status());
    print_transfer_summary("saved " + a->out + ":", *st);
  });

  CLI::App* load = add_cache_command(cache, "load", "Import a snapshot file; prints the new cache id", *a);
  load->add_option("-f,--file", a->file, "Snapshot file")->required();
  load->callback([a] {
    auto agent = connect_or_exit(a->agent, a->remote);
    auto r = agent->load_cache(a->file, progress_reporter("import"));
    exit_on_error(r.status());
    std::printf("%s\n", r->reply.cache_id().c_str());
    print_transfer_summary("loaded " + a->file + ":", r->stats);
  });

  CLI::App* drop = add_cache_command(cache, "drop", "Drop a cache", *a);
  drop->add_option("--cache", a->cache, "Cache id")->required();
  drop->callback([a] { exit_on_error(connect_or_exit(a->agent, a->remote)->drop_cache(a->cache)); });

  CLI::App* pin = add_cache_command(cache, "pin", "Pin a cache (never evicted for space), or unpin it", *a);
  pin->add_option("--cache", a->cache, "Cache id")->required();
  pin->add_flag("--unpin", a->unpin, "Unpin instead");
  pin->callback([a] {
    auto r = connect_or_exit(a->agent, a->remote)->pin_cache(a->cache, !a->unpin);
    exit_on_error(r.status());
    std::printf("%s %s\n", r->cache_id().c_str(), r->pinned() ? "pinned" : "unpinned");
  });
}

}  // namespace kvb::cli
