// kvbridge pass: one agent continues from another agent's cache. The receiver (--to) is asked to
// Generate with context CacheRef{--from, --cache}; it pulls the cache from the sharer itself
// (ExportCache, agent to agent: the bytes never pass through this client) and continues with the
// prompt. Prints the prompt and the continuation on stdout and the summary line on stderr.
#include <cstdio>

#include "client/cli_remote.h"

namespace kvb::cli {

void register_pass(CLI::App& app) {
  struct Args {
    std::string from, cache, to, prompt;
    bool keep_cache = false;
    SamplingFlags sampling;
    PullFlags pull;
    RemoteFlags remote;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("pass", "Have one agent continue from another agent's cache");
  c->add_option("--from", a->from, "The sharer: agent holding the cache (host:port)")->required();
  c->add_option("--cache", a->cache, "Cache id on the sharer")->required();
  c->add_option("--to", a->to, "The receiver: agent that pulls the cache and generates (host:port)")->required();
  c->add_option("-p,--prompt", a->prompt, "Text the receiver appends after the cache");
  c->add_flag("--keep-cache", a->keep_cache, "Keep the receiver's context + prompt + output as a new cache");
  add_sampling_flags(c, a->sampling);
  add_pull_flags(c, a->pull, "the passed cache");
  add_remote_flags(c, a->remote);
  c->callback([a] {
    auto receiver = connect_or_exit(a->to, a->remote);
    client::v1::GenerateRequest req;
    *req.add_context() = client::cache_ref(a->from, a->cache);
    if (!a->prompt.empty()) req.set_text(a->prompt);
    a->sampling.apply(req);
    a->pull.apply(req.mutable_pull());
    req.set_keep_cache(a->keep_cache);
    std::fputs(a->prompt.c_str(), stdout);
    (void)stream_generate(*receiver, req);
  });
}

}  // namespace kvb::cli
