// kvbridge prefill: has an agent run a text (after optional context caches) into a new cache and
// prints the cache's id on stdout (details on stderr).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "client/cli_remote.h"

namespace kvb::cli {

namespace {

struct PrefillArgs {
  std::string agent, text, file;
  std::vector<std::string> context;
  bool pin = false, no_bos = false;
  uint32_t ttl_s = 0;
  RemoteFlags remote;
  PullFlags pull;
  ChatFlags chat;
};

std::string read_input(const PrefillArgs& a) {
  if (a.file.empty()) return a.text;
  auto text = read_input_file(a.file);
  exit_on_error(text.status());
  return std::move(text).value();
}

void run_prefill(const PrefillArgs& a) {
  auto agent = connect_or_exit(a.agent, a.remote);
  client::v1::PrefillRequest req;
  if (a.chat.given()) {
    set_chat_input(a.chat, req.mutable_chat());
  } else {
    req.set_text(read_input(a));
  }
  for (const std::string& c : a.context) *req.add_context() = parse_cache_ref(c);
  if (a.no_bos) req.set_add_bos(false);
  a.pull.apply(req.mutable_pull());
  req.set_cache_ttl_seconds(a.ttl_s);
  req.set_pin(a.pin);
  auto r = agent->prefill(req);
  exit_on_error(r.status());
  print_context_transports(r->context_transports());
  std::printf("%s\n", r->cache_id().c_str());
  std::fprintf(stderr, "prefilled %u tokens (%s) in %.2f ms%s\n", r->n_tokens(), human_bytes(r->cache_bytes()).c_str(),
               r->prefill_ms(), a.pin ? ", pinned" : "");
}

}  // namespace

void register_prefill(CLI::App& app) {
  auto a = std::make_shared<PrefillArgs>();
  CLI::App* c = app.add_subcommand("prefill", "Have an agent prefill a text into a cache; prints the cache id");
  c->add_option("--agent", a->agent, "Agent address (host:port)")->required();
  auto* text = c->add_option("--text", a->text, "Text to prefill");
  auto* file = c->add_option("--file", a->file, "File whose contents to prefill ('-' = stdin)");
  text->excludes(file);
  auto* messages = add_chat_flags(c, a->chat);
  messages->excludes(text)->excludes(file);
  c->add_option("--context", a->context, "Cache AGENT/ID placed before the text (repeatable, in order)")
      ->allow_extra_args(false);
  c->add_flag("--pin", a->pin, "Pin the new cache (never evicted for space)");
  c->add_flag("--no-bos", a->no_bos, "Do not put BOS before the text");
  c->add_option("--ttl", a->ttl_s, "Idle seconds before the cache expires (0 = the agent's default)");
  add_pull_flags(c, a->pull, "context caches pulled from other agents");
  add_remote_flags(c, a->remote);
  c->callback([a] {
    if (a->text.empty() && a->file.empty() && !a->chat.given()) throw CLI::RequiredError("--text, --file or --messages");
    run_prefill(*a);
  });
}

}  // namespace kvb::cli
