// c2c_eval: does passing a fused cache beat passing text? (issue #17, C2C's evaluation.)
//
//   c2c_eval --sharer M [--tokenizer-sharer T] --receiver M [--tokenizer-receiver T]
//            --examples test.jsonl --fuser DIR [--fuser DIR ...] [--baseline-fuser DIR]
//            [--limit N] [--note-tokens 32] [--note-chat] [--json OUT]
//
// Everything runs through services on loopback, as a deployment would: one sharer agent, one
// receiver agent, one kvbridge-fuser per fuser directory (the trained ones, one per training seed,
// and optionally a baseline such as a random-weight fuser). Torch is not involved. For each example
// {context, continuation} of a corpus split (fuser/train/corpus.py), the continuation is scored
// teacher-forced (GenerateRequest.forced) under four modes:
//   (a) receiver alone: the receiver reads the context as text;
//   (b) C2C: the sharer prefills the context, the receiver fuses the sharer's cache through a
//       kvbridge-fuser and reads the continuation over it;
//   (c) text to text: the sharer first writes a note of --note-tokens tokens (greedy) after the
//       context (--note-chat: in reply to a chat message asking for one), which is prepended to
//       the receiver's context;
//   (d) the sharer alone, on its own tokens.
// Reported per mode: bits per byte of the continuation (comparable across tokenizers: every mode
// scores exactly the same bytes), next-token accuracy (top-1 = the corpus token; over receiver
// tokens for (a)-(c), sharer tokens for (d)) and the median time from the first request of the
// mode to the continuation's first scored token on the client (for (b): the sharer's Prefill, then
// the fused Generate; for (c): the note's generation, then the receiver's Generate).
//
// Tokens are exactly those kvbridge fuser dump trains on: the receiver's context is its encoding of
// the sharer's decoding of the context (what an agent in receiver mode re-reads), the
// continuation the receiver's raw encoding of its text. In C2C the context's last position is
// computed by the receiver's own prefill and is not changed by fusion, so (b)'s first continuation
// token has (a)'s log-probability; (b) scores the rest over the fused cache. Agents run without
// prefix caching so that no mode finds another's prompt computed.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/model.h"
#include "fuser/align.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using client::AgentProcess;
using kvb::bench::Clock;
using kvb::bench::seconds_since;

namespace {

[[noreturn]] void die(const Status& s, const std::string& what) {
  fmt::print(stderr, "c2c_eval: {}: {}\n", what, s.to_string());
  std::exit(1);
}
template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r.ok()) die(r.status(), what);
  return std::move(r).value();
}

struct Options {
  std::string sharer, tok_s, receiver, tok_r, examples, json_out, baseline_fuser;
  std::vector<std::string> fusers;
  int32_t limit = 0, note_tokens = 32, threads = 2;
  bool note_chat = false;
  std::string note_request = "Write a short note on what matters in this text:\n\n";
};

// One mode's totals over the examples.
struct Totals {
  double nats = 0;  // -log-probability of the continuations
  int64_t tokens = 0, correct = 0;
  std::vector<double> ttft_ms;
  double bpb(int64_t bytes) const { return nats / std::log(2.0) / double(std::max<int64_t>(bytes, 1)); }
  double accuracy() const { return tokens ? double(correct) / double(tokens) : 0.0; }
  double ttft_p50() const {
    std::vector<double> v = ttft_ms;
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  }
};

// One scored request: each forced token's log-probability and whether it was the top-1.
struct Scored {
  std::vector<double> logprob;
  std::vector<bool> top1;
  std::string text;   // the forced tokens' streamed text (the scored bytes)
  double first_ms = 0;  // t0 -> first token event on this client
  uint32_t context_tokens = 0;
};

Scored score(AgentClient& agent, v1::GenerateRequest req, const std::vector<int32_t>& forced, Clock::time_point t0) {
  req.mutable_forced()->mutable_ids()->Assign(forced.begin(), forced.end());
  req.set_top_logprobs(1);
  Scored s;
  const auto summary = must(agent.generate(req,
                                           [&](const v1::TokenEvent& t) {
                                             if (s.logprob.empty()) s.first_ms = seconds_since(t0) * 1e3;
                                             s.logprob.push_back(t.logprob());
                                             s.top1.push_back(t.top_size() > 0 && t.top(0).id() == t.id());
                                             s.text += t.text();
                                             return true;
                                           }),
                            "Generate (scoring)");
  s.text += summary.tail_text();
  s.context_tokens = summary.context_tokens();
  if (s.logprob.size() != forced.size()) {
    die(internal_error(fmt::format("{} forced tokens, {} scored", forced.size(), s.logprob.size())), "scoring");
  }
  return s;
}

void add(Totals& t, const Scored& s, double ttft_ms) {
  for (size_t i = 0; i < s.logprob.size(); ++i) {
    t.nats -= s.logprob[i];
    t.correct += s.top1[i] ? 1 : 0;
    ++t.tokens;
  }
  t.ttft_ms.push_back(ttft_ms);
}

v1::GenerateRequest token_request(const std::vector<int32_t>& ids) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
  r.set_add_bos(false);
  return r;
}

struct Example {
  std::string context, continuation;
};

std::vector<Example> read_examples(const std::string& path, int32_t limit) {
  std::ifstream f(path);
  if (!f) die(not_found(path), "reading the examples");
  std::vector<Example> out;
  std::string line;
  while (std::getline(f, line) && (limit <= 0 || int32_t(out.size()) < limit)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("context") || !j["context"].is_string() || !j.contains("continuation") ||
        !j["continuation"].is_string()) {
      die(invalid_argument(fmt::format("{}: line {} is not {{\"context\", \"continuation\"}}", path, out.size() + 1)),
          "reading the examples");
    }
    out.push_back({j["context"].get<std::string>(), j["continuation"].get<std::string>()});
  }
  return out;
}

struct Services {
  std::unique_ptr<AgentProcess> sharer, receiver;
  std::vector<std::unique_ptr<AgentProcess>> fusers;  // Options::fusers, then the baseline
  std::unique_ptr<AgentClient> cs, cr;
};

Services start_services(const Options& o) {
  Services s;
  auto start = [&](const std::string& bin, std::vector<std::string> args, const std::string& what) {
    client::AgentProcessOptions ao;
    ao.binary = bin;
    ao.args = std::move(args);
    ao.args.insert(ao.args.end(), {"--threads", std::to_string(o.threads), "--log-format", "text"});
    ao.log_path = "/dev/null";
    return must(AgentProcess::start(ao), "starting " + what);
  };
  auto agent_args = [](const std::string& m, const std::string& t) {
    std::vector<std::string> a = {"--model", m, "--prefix-cache-bytes", "0"};
    if (!t.empty()) a.insert(a.end(), {"--tokenizer", t});
    return a;
  };
  s.sharer = start(KVB_AGENT_BIN, agent_args(o.sharer, o.tok_s), "the sharer agent");
  s.receiver = start(KVB_AGENT_BIN, agent_args(o.receiver, o.tok_r), "the receiver agent");
  std::vector<std::string> dirs = o.fusers;
  if (!o.baseline_fuser.empty()) dirs.push_back(o.baseline_fuser);
  for (const std::string& d : dirs) s.fusers.push_back(start(KVB_FUSER_BIN, {"--weights", d}, "kvbridge-fuser " + d));
  s.cs = must(AgentClient::connect(s.sharer->address(), {}), "connecting to the sharer");
  s.cr = must(AgentClient::connect(s.receiver->address(), {}), "connecting to the receiver");
  return s;
}

// Tokens of one example, as kvbridge fuser dump computes them (see the header); nullopt when the
// example does not fit the receiver's context (fuser::fit_example).
std::optional<fuser::ExampleTokens> tokenize(const Model& sharer, const Model& receiver, const Example& e) {
  fuser::ExampleTokens t = fuser::example_tokens(*sharer.tokenizer, *receiver.tokenizer, e.context, e.continuation);
  if (!fuser::fit_example(t, size_t(receiver.config.n_ctx_train))) return std::nullopt;
  return t;
}

struct Run {
  int64_t examples = 0, skipped = 0, bytes = 0, notes_cut = 0, note_tokens_kept = 0;
  Totals a, c, d;
  std::vector<Totals> b;  // per fuser (the baseline last)
};

// (c)'s note: the sharer's greedy continuation of the context, or its reply to a request for one.
std::pair<std::string, double> write_note(const Options& o, AgentClient& sharer, const Example& e) {
  v1::GenerateRequest r;
  if (o.note_chat) {
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(o.note_request + e.context);
  } else {
    r.set_text(e.context);
  }
  r.set_max_tokens(uint32_t(o.note_tokens));
  r.mutable_sampling()->set_temperature(0.0f);
  const auto t0 = Clock::now();
  const auto s = must(sharer.generate(r), "Generate (the note)");
  return {s.text(), seconds_since(t0) * 1e3};
}

void eval_example(const Options& o, Services& sv, const Model& sharer, const Model& receiver, const Example& e,
                  Run& run) {
  const std::optional<fuser::ExampleTokens> tk = tokenize(sharer, receiver, e);
  if (!tk) {
    ++run.skipped;
    return;
  }
  const std::vector<int32_t>& ctx_r = tk->receiver_context;
  const std::vector<int32_t>& cont_r = tk->continuation;
  // (a): the whole continuation after the receiver's own context; its text is the scored bytes.
  auto t0 = Clock::now();
  const Scored a = score(*sv.cr, token_request(ctx_r), cont_r, t0);
  add(run.a, a, a.first_ms);
  const std::string& scored = a.text;
  run.bytes += int64_t(scored.size());

  // (d): the same bytes on the sharer's tokens.
  EncodeOptions raw{false, false};
  raw.add_space_prefix = false;
  const std::vector<int32_t> cont_s = sharer.tokenizer->encode(scored, raw);
  t0 = Clock::now();
  const Scored d = score(*sv.cs, token_request(tk->sharer_context), cont_s, t0);
  add(run.d, d, d.first_ms);

  // (c): [BOS] note "\n" context, cut to the receiver's context (the note's end goes first); a
  // receiver without BOS (SmolLM2) reads the note first.
  const auto [note, note_ms] = write_note(o, *sv.cs, e);
  EncodeOptions plain{false, false};
  std::vector<int32_t> note_r = receiver.tokenizer->encode(note + "\n", plain);
  const size_t room = size_t(receiver.config.n_ctx_train) - ctx_r.size() - cont_r.size();
  if (note_r.size() > room) {
    note_r.resize(room);
    ++run.notes_cut;
  }
  run.note_tokens_kept += int64_t(note_r.size());
  const size_t n_bos = ctx_r[0] == receiver.tokenizer->bos() ? 1 : 0;
  std::vector<int32_t> c_ids(ctx_r.begin(), ctx_r.begin() + ptrdiff_t(n_bos));
  c_ids.insert(c_ids.end(), note_r.begin(), note_r.end());
  c_ids.insert(c_ids.end(), ctx_r.begin() + ptrdiff_t(n_bos), ctx_r.end());
  t0 = Clock::now();
  const Scored c = score(*sv.cr, token_request(c_ids), cont_r, t0);
  add(run.c, c, note_ms + c.first_ms);

  // (b): one sharer Prefill serves every fuser; each fused request is timed from it.
  t0 = Clock::now();
  v1::PrefillRequest p;
  p.set_text(e.context);
  const v1::PrefillResponse cache = must(sv.cs->prefill(p), "Prefill");
  const double prefill_ms = seconds_since(t0) * 1e3;
  const std::vector<int32_t> first = {cont_r[0]};
  const std::vector<int32_t> rest(cont_r.begin() + 1, cont_r.end());
  for (size_t f = 0; f < sv.fusers.size(); ++f) {
    v1::GenerateRequest r = token_request(first);
    *r.add_context() = client::cache_ref(sv.sharer->address(), cache.cache_id());
    r.mutable_fuser()->set_address(sv.fusers[f]->address());
    t0 = Clock::now();
    Scored b = score(*sv.cr, r, rest, t0);
    if (b.context_tokens != ctx_r.size()) {
      die(internal_error(fmt::format("the receiver fused {} context tokens, {} expected", b.context_tokens,
                                     ctx_r.size())),
          "fused scoring");
    }
    b.logprob.insert(b.logprob.begin(), a.logprob[0]);  // the unfused last context position
    b.top1.insert(b.top1.begin(), a.top1[0]);
    add(run.b[f], b, prefill_ms + b.first_ms);
  }
  if (auto st = sv.cs->drop_cache(cache.cache_id()); !st.ok()) die(st, "DropCache");
  ++run.examples;
}

}  // namespace

namespace {

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / double(v.size());
}
double stddev(const std::vector<double>& v) {  // sample standard deviation; 0 for one value
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}

nlohmann::json mode_json(const Totals& t, int64_t bytes) {
  return {{"bits_per_byte", t.bpb(bytes)}, {"accuracy", t.accuracy()}, {"tokens", t.tokens},
          {"ttft_p50_ms", t.ttft_p50()}};
}

void report(const Options& o, const Run& run) {
  const int64_t B = run.bytes;
  fmt::print("{} examples ({} skipped: context too long for the receiver or continuation under 2 tokens), {} bytes "
             "scored; (c) notes: {} greedy sharer tokens{}, {} cut to fit the receiver's context, {:.1f} receiver "
             "tokens kept on average\n",
             run.examples, run.skipped, B, o.note_tokens,
             o.note_chat ? " in reply to a chat request" : " after the context",
             run.notes_cut, double(run.note_tokens_kept) / double(std::max<int64_t>(run.examples, 1)));
  fmt::print("{:<44} {:>10} {:>15} {:>13}\n", "mode", "bits/byte", "next-token acc", "TTFT p50 ms");
  auto row = [&](const std::string& label, const Totals& t) {
    fmt::print("{:<44} {:>10.4f} {:>15.4f} {:>13.2f}\n", label, t.bpb(B), t.accuracy(), t.ttft_p50());
  };
  row("(a) receiver alone", run.a);
  std::vector<double> b_bpb, b_acc, b_ttft;
  for (size_t f = 0; f < o.fusers.size(); ++f) {
    row(fmt::format("(b) C2C, fuser {}", f + 1), run.b[f]);
    b_bpb.push_back(run.b[f].bpb(B));
    b_acc.push_back(run.b[f].accuracy());
    b_ttft.push_back(run.b[f].ttft_p50());
  }
  fmt::print("{:<44} {:>10} {:>15} {:>13}\n", fmt::format("(b) C2C, mean ± sd over {} fusers", o.fusers.size()),
             fmt::format("{:.4f}±{:.4f}", mean(b_bpb), stddev(b_bpb)),
             fmt::format("{:.4f}±{:.4f}", mean(b_acc), stddev(b_acc)), fmt::format("{:.2f}", mean(b_ttft)));
  if (!o.baseline_fuser.empty()) row("(b0) C2C, baseline fuser", run.b.back());
  row(fmt::format("(c) text to text ({}-token note)", o.note_tokens), run.c);
  row("(d) sharer alone", run.d);
  const double a = run.a.bpb(B), c = run.c.bpb(B), b = mean(b_bpb), sd = stddev(b_bpb);
  fmt::print("(b) vs (a): {:+.1f}% bits/byte ({:+.4f}, fuser sd {:.4f}); (b) vs (c): {:+.1f}%; "
             "TTFT (b) / (c): {:.2f}x\n",
             100 * (b - a) / a, b - a, sd, 100 * (b - c) / c, mean(b_ttft) / std::max(run.c.ttft_p50(), 1e-9));
  for (size_t f = 0; f < o.fusers.size(); ++f) fmt::print("fuser {}: {}\n", f + 1, o.fusers[f]);
  if (!o.baseline_fuser.empty()) fmt::print("baseline fuser: {}\n", o.baseline_fuser);
  if (o.json_out.empty()) return;
  nlohmann::json j = {{"examples", run.examples}, {"skipped", run.skipped}, {"bytes", B}, {"notes_cut", run.notes_cut},
                      {"a", mode_json(run.a, B)}, {"c", mode_json(run.c, B)}, {"d", mode_json(run.d, B)},
                      {"b_mean", {{"bits_per_byte", b}, {"bits_per_byte_sd", sd}, {"accuracy", mean(b_acc)},
                                  {"accuracy_sd", stddev(b_acc)}, {"ttft_p50_ms", mean(b_ttft)}}},
                      {"b", nlohmann::json::array()}};
  for (size_t f = 0; f < o.fusers.size(); ++f) {
    nlohmann::json m = mode_json(run.b[f], B);
    m["fuser"] = o.fusers[f];
    j["b"].push_back(m);
  }
  if (!o.baseline_fuser.empty()) {
    j["b0"] = mode_json(run.b.back(), B);
    j["b0"]["fuser"] = o.baseline_fuser;
  }
  std::ofstream(o.json_out) << j.dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"C2C evaluation through running agents and kvbridge-fuser services (issue #17)"};
  app.add_option("--sharer", o.sharer, "Sharer model file")->required();
  app.add_option("--tokenizer-sharer", o.tok_s, "Sharer tokenizer (llama2.c)");
  app.add_option("--receiver", o.receiver, "Receiver model file")->required();
  app.add_option("--tokenizer-receiver", o.tok_r, "Receiver tokenizer (llama2.c)");
  app.add_option("--examples", o.examples, "JSON lines {\"context\", \"continuation\"} (a corpus split)")->required();
  app.add_option("--fuser", o.fusers, "Trained fuser directory (repeat: one per training seed)")->required();
  app.add_option("--baseline-fuser", o.baseline_fuser, "Another fuser reported apart (e.g. random weights)");
  app.add_option("--limit", o.limit, "First N examples only (0 = all)")->check(CLI::Range(0, 1 << 30));
  app.add_option("--note-tokens", o.note_tokens, "Tokens of (c)'s note")->check(CLI::Range(1, 4096));
  app.add_flag("--note-chat", o.note_chat, "(c): the note replies to a chat message asking for one (instruct sharers)");
  app.add_option("--threads", o.threads, "CPU threads of each service")->check(CLI::Range(1, 1024));
  app.add_option("--json", o.json_out, "Also write the results as JSON here");
  CLI11_PARSE(app, argc, argv);

  auto sharer = must(load_model(o.sharer, LoadOptions{o.tok_s}), "loading the sharer");
  auto receiver = must(load_model(o.receiver, LoadOptions{o.tok_r}), "loading the receiver");
  if (!sharer->tokenizer || !receiver->tokenizer) die(invalid_argument("a model has no tokenizer"), "loading");
  const std::vector<Example> examples = read_examples(o.examples, o.limit);
  Services sv = start_services(o);
  Run run;
  run.b.resize(sv.fusers.size());
  const auto t0 = Clock::now();
  for (size_t i = 0; i < examples.size(); ++i) {
    eval_example(o, sv, *sharer, *receiver, examples[i], run);
    if ((i + 1) % 10 == 0 || i + 1 == examples.size()) {
      const double s = seconds_since(t0);
      fmt::print(stderr, "\rc2c_eval: {}/{} examples, {:.0f} s, ETA {:.0f} s   ", i + 1, examples.size(), s,
                 s / double(i + 1) * double(examples.size() - i - 1));
    }
  }
  fmt::print(stderr, "\n");
  if (run.examples == 0) die(invalid_argument("no example could be scored"), o.examples);
  report(o, run);
  return 0;
}
