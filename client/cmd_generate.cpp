// kvbridge generate: generation with a local model file (--model), or by an agent (--agent, with
// optional context caches), printing tokens as they come.
#include <fmt/format.h>

#include <cmath>
#include <cstdio>

#include "client/cli_remote.h"
#include "client/commands.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/utf8_stream.h"
#include "kernels/registry.h"

namespace kvb::cli {

namespace {

struct GenerateArgs {
  std::string model, tokenizer, prompt, device = "cpu";
  ChatFlags chat;  // instead of --prompt
  int32_t n = 128, threads = 0, ctx = 0;
  float temp = 0.0f, top_p = 1.0f;
  int32_t top_k = 0;
  uint64_t seed = 0;
  bool stats = false;
  // remote mode
  std::string agent;
  std::vector<std::string> context;
  bool keep_cache = false;
  std::string fuser;        // receiver mode: a FuserService for contexts of another model
  bool fuser_embedded = false;  // ... or the agent's own --fuser
  std::string score;        // a continuation to score (teacher-forced) instead of generating
  bool logprobs = false;
  int32_t top_logprobs = 0;
  RemoteFlags remote;
  PullFlags pull;
};

// The local model's prompt: --prompt with the tokenizer's defaults, or --messages rendered.
std::vector<int32_t> local_prompt(const GenerateArgs& a, const Tokenizer& tok) {
  if (!a.chat.given()) return tok.encode(a.prompt);
  auto tmpl = a.chat.template_name.empty() ? ChatTemplate::from_source(tok.vocab().chat_template)
                                           : ChatTemplate::from_name(a.chat.template_name);
  exit_on_error(tmpl.status());
  auto json = read_input_file(a.chat.messages);
  exit_on_error(json.status());
  auto messages = parse_chat_messages(*json);
  exit_on_error(messages.status());
  ChatOptions opt;
  opt.add_generation_prompt = !a.chat.no_generation_prompt;
  if (a.chat.no_thinking) opt.enable_thinking = false;
  auto text = tmpl->render(*messages, opt);
  exit_on_error(text.status());
  return tok.encode(*text, chat_encode_options());
}

// One line per token on stderr: id, text (quoted, escaped), log-probability, then the top
// alternatives.
void print_token_logprobs(const client::v1::TokenEvent& t) {
  std::string line = fmt::format("{:>7} {:>16} {:>9.4f}", t.id(), fmt::format("{:?}", t.text()), t.logprob());
  for (const auto& e : t.top()) line += fmt::format("  {}:{:.3f}", e.id(), e.logprob());
  std::fprintf(stderr, "%s\n", line.c_str());
}

// --score: the continuation's tokens streamed with their log-probabilities; the totals on stderr.
void run_remote_score(client::AgentClient& agent, client::v1::GenerateRequest& req, const GenerateArgs& a) {
  auto ids = agent.tokenize(a.score, /*raw=*/true);
  exit_on_error(ids.status());
  if (ids->empty()) exit_on_error(invalid_argument("--score: the text has no tokens"));
  req.mutable_forced()->mutable_ids()->Add(ids->begin(), ids->end());
  double sum = 0;
  (void)stream_generate(agent, req, a.stats, [&](const client::v1::TokenEvent& t) {
    sum += t.logprob();
    if (a.logprobs || a.top_logprobs > 0) print_token_logprobs(t);
  });
  const size_t n = ids->size();
  std::fprintf(stderr, "scored %zu tokens (%zu bytes): log-probability %.4f nats, %.4f nats/token, %.4f bits/byte\n",
               n, a.score.size(), sum, -sum / double(n), -sum / std::log(2.0) / double(a.score.size()));
}

void run_remote_generate(const GenerateArgs& a) {
  // The agent reads max_tokens 0 as its default (128), not as "nothing".
  if (a.n == 0) throw CLI::ValidationError("-n", "an agent generates at least one token");
  auto agent = connect_or_exit(a.agent, a.remote);
  client::v1::GenerateRequest req;
  if (a.chat.given()) {
    set_chat_input(a.chat, req.mutable_chat());
  } else {
    req.set_text(a.prompt);
  }
  for (const std::string& c : a.context) *req.add_context() = parse_cache_ref(c);
  req.set_max_tokens(uint32_t(a.n));
  req.mutable_sampling()->set_temperature(a.temp);
  req.mutable_sampling()->set_top_k(a.top_k);
  req.mutable_sampling()->set_top_p(a.top_p);
  req.mutable_sampling()->set_seed(a.seed);
  a.pull.apply(req.mutable_pull());
  req.set_keep_cache(a.keep_cache);
  if (a.fuser_embedded) req.mutable_fuser()->set_embedded(true);
  if (!a.fuser.empty()) req.mutable_fuser()->set_address(a.fuser);
  req.set_logprobs(a.logprobs);
  req.set_top_logprobs(uint32_t(a.top_logprobs));
  std::fputs(a.prompt.c_str(), stdout);
  if (!a.score.empty()) return run_remote_score(*agent, req, a);
  std::function<void(const client::v1::TokenEvent&)> each;
  if (a.logprobs || a.top_logprobs > 0) each = print_token_logprobs;
  const client::v1::GenerateSummary s = stream_generate(*agent, req, a.stats, each);
  if (a.keep_cache && !a.stats) std::fprintf(stderr, "cache_id=%s\n", s.cache_id().c_str());
}

void run_generate(const GenerateArgs& a) {
  if (!a.agent.empty()) return run_remote_generate(a);
  auto model = load_model(a.model, LoadOptions{a.tokenizer});
  exit_on_error(model.status());
  const Model& m = **model;
  if (!m.tokenizer) {
    exit_on_error(invalid_argument(fmt::format("{} has no tokenizer; pass --tokenizer", a.model)));
  }
  auto device = find_device(a.device);
  exit_on_error(device.status());
  auto backend = (*device)->create_backend();
  exit_on_error(backend.status());
  if (a.threads > 0) (*backend)->set_n_threads(a.threads);
  auto runner = ModelRunner::create(m, **backend);
  exit_on_error(runner.status());
  auto cache = (*runner)->new_cache(a.ctx);
  exit_on_error(cache.status());

  const std::vector<int32_t> prompt = local_prompt(a, *m.tokenizer);
  GenerateParams p;
  p.sampling = SamplingParams{a.temp, a.top_k, a.top_p, a.seed};
  p.max_tokens = a.n;
  std::fputs(a.prompt.c_str(), stdout);
  int32_t prev = prompt.empty() ? -1 : prompt.back();
  // The same text an agent streams (TokenEvent.text, then GenerateSummary.tail_text): valid UTF-8,
  // a character split over tokens printed once complete.
  Utf8StreamDecoder utf8;
  std::string text;
  auto r = generate(**runner, **cache, prompt, p, [&](int32_t id) {
    text.clear();
    utf8.push(m.tokenizer->decode_token(id, prev), text);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    prev = id;
    return true;
  });
  const std::string tail = utf8.finish();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  exit_on_error(r.status());
  if (a.stats) {
    const double decode_tps = r->tokens.size() > 1 ? double(r->tokens.size() - 1) / r->decode_s : 0.0;
    std::fprintf(stderr, "prompt %d tokens in %.1f ms (%.1f tok/s), generated %zu tokens, decode %.1f tok/s\n",
                 r->n_prompt, r->prefill_s * 1e3, r->n_prompt / r->prefill_s, r->tokens.size(), decode_tps);
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* c = app.add_subcommand("generate", "Generate text from a prompt with a local model or an agent");
  auto* model = c->add_option("-m,--model", a->model, "Model file (GGUF or llama2.c .bin)");
  auto* agent = c->add_option("--agent", a->agent, "Generate on this agent (host:port) instead of a local model");
  model->excludes(agent);
  c->add_option("--context", a->context, "Context cache AGENT/ID placed before the prompt (repeatable, in order)")
      ->allow_extra_args(false)
      ->needs(agent);
  c->add_flag("--keep-cache", a->keep_cache, "Keep context + prompt + output as a new cache; print its id")
      ->needs(agent);
  auto* fuser = c->add_option("--fuser", a->fuser, "FuserService (host:port) for contexts held by another model");
  auto* fuser_embedded =
      c->add_flag("--fuser-embedded", a->fuser_embedded, "Fuse contexts of another model with the agent's --fuser");
  fuser->needs(agent)->excludes(fuser_embedded);
  fuser_embedded->needs(agent);
  add_pull_flags(c, a->pull, "context caches pulled from other agents");
  add_remote_flags(c, a->remote);
  c->add_option("--tokenizer", a->tokenizer, "Tokenizer file for formats that keep it apart (llama2.c tokenizer.bin)");
  auto* prompt = c->add_option("-p,--prompt", a->prompt, "Prompt text");
  auto* messages = add_chat_flags(c, a->chat);
  prompt->excludes(messages);
  c->add_option("-n,--n-predict", a->n, "Tokens to generate")->check(CLI::Range(0, 1 << 20));
  c->add_option("--temp", a->temp, "Sampling temperature (0 = greedy)")->check(CLI::Range(0.0f, 100.0f));
  c->add_option("--top-k", a->top_k, "Top-k (0 = off)")->check(CLI::Range(0, 1 << 22));
  c->add_option("--top-p", a->top_p, "Top-p nucleus mass")->check(CLI::Range(0.0f, 1.0f));
  c->add_option("--seed", a->seed, "RNG seed");
  c->add_option("-t,--threads", a->threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1024));
  c->add_option("-c,--ctx-size", a->ctx, "Context size in tokens (default: the model's)")->check(CLI::Range(0, 1 << 24));
  c->add_option("--device", a->device, "cpu or cuda:N");
  c->add_flag("--stats", a->stats, "Print timing to stderr");
  c->add_option("--score", a->score,
                "Score this continuation (teacher-forced) after the prompt: per-token log-probabilities, "
                "nats/token and bits/byte on stderr")
      ->needs(agent);
  c->add_flag("--logprobs", a->logprobs, "Print each token's log-probability on stderr")->needs(agent);
  c->add_option("--top-logprobs", a->top_logprobs, "And the K most likely tokens at each step")
      ->check(CLI::Range(0, 20))
      ->needs(agent);
  c->callback([a, prompt, messages] {
    if (a->model.empty() && a->agent.empty()) throw CLI::RequiredError("--model or --agent");
    if (prompt->count() == 0 && messages->count() == 0) throw CLI::RequiredError("--prompt or --messages");
    run_generate(*a);
  });
}

}  // namespace kvb::cli
