// kvbridge fuse: cache-to-cache across two different models. The sharer (--sharer) prefills the
// context file into a cache; the receiver (--receiver, another model) is asked to Generate after
// that cache with a fuser (--fuser ADDR, or --embedded for the one loaded in the receiver with
// --fuser DIR): it re-reads the context as its own tokens, pulls the sharer slices the fuser needs,
// fuses them into its cache and continues with the prompt. The context bytes never pass through
// this client twice: it sends the file once, to the sharer. Prints the continuation on stdout and
// the summary (with the fusion's figures) on stderr.
#include <cstdio>

#include "client/cli_remote.h"

namespace kvb::cli {

void register_fuse(CLI::App& app) {
  struct Args {
    std::string sharer, receiver, fuser, context_file, prompt, transport = "auto";
    bool embedded = false;
    bool keep_cache = false;
    SamplingFlags sampling;
    WireFlags wire;
    RemoteFlags remote;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("fuse", "Receiver continues from a different model's cache, through a fuser");
  c->add_option("--sharer", a->sharer, "Agent that reads the context (host:port)")->required();
  c->add_option("--receiver", a->receiver, "Agent with another model that generates (host:port)")->required();
  auto* f = c->add_option("--fuser", a->fuser, "FuserService for the pair (host:port)");
  auto* e = c->add_flag("--embedded", a->embedded, "Use the fuser loaded in the receiver (kvbridge-agent --fuser)");
  f->excludes(e);
  c->add_option("--context-file", a->context_file, "Text file: the context the sharer prefills")
      ->required()
      ->check(CLI::ExistingFile);
  c->add_option("-p,--prompt", a->prompt, "Text the receiver appends after the fused context");
  c->add_flag("--keep-cache", a->keep_cache, "Keep the receiver's fused context + prompt + output as a cache");
  add_sampling_flags(c, a->sampling);
  add_wire_flags(c, a->wire, "the slices exchanged with the fuser");
  add_transport_flag(c, a->transport, "the sharer's cache");
  add_remote_flags(c, a->remote);
  c->callback([a] {
    if (a->fuser.empty() && !a->embedded) exit_on_error(invalid_argument("fuse: give --fuser ADDR or --embedded"));
    auto text = read_input_file(a->context_file);
    exit_on_error(text.status());
    auto sharer = connect_or_exit(a->sharer, a->remote);
    client::v1::PrefillRequest p;
    p.set_text(*text);
    p.set_cache_ttl_seconds(600);
    auto cache = sharer->prefill(p);
    exit_on_error(cache.status());
    std::fprintf(stderr, "sharer %s: cache %s (%u tokens, %.1f ms)\n", a->sharer.c_str(), cache->cache_id().c_str(),
                 cache->n_tokens(), cache->prefill_ms());

    auto receiver = connect_or_exit(a->receiver, a->remote);
    client::v1::GenerateRequest req;
    *req.add_context() = client::cache_ref(a->sharer, cache->cache_id());
    if (!a->prompt.empty()) req.set_text(a->prompt);
    if (a->embedded) {
      req.mutable_fuser()->set_embedded(true);
    } else {
      req.mutable_fuser()->set_address(a->fuser);
    }
    req.mutable_fuser()->set_dtype(a->wire.dtype());
    req.mutable_pull()->set_transport(a->transport);
    a->sampling.apply(req);
    req.set_keep_cache(a->keep_cache);
    std::fputs(a->prompt.c_str(), stdout);
    const client::v1::GenerateSummary s = stream_generate(*receiver, req);
    const client::v1::FuseStats& fs = s.fuse();
    std::fprintf(stderr,
                 "fused_tokens=%u slices_fused=%u slices_fused_early=%u aligned=%s sharer_bytes=%llu "
                 "fuser_bytes_sent=%llu fuser_bytes_received=%llu fuse_ms=%.2f\n",
                 fs.fused_tokens(), fs.slices_fused(), fs.slices_fused_early(), fs.aligned() ? "yes" : "no",
                 static_cast<unsigned long long>(fs.sharer_bytes()),
                 static_cast<unsigned long long>(fs.fuser_bytes_sent()),
                 static_cast<unsigned long long>(fs.fuser_bytes_received()), fs.fuse_ms());
  });
}

}  // namespace kvb::cli
