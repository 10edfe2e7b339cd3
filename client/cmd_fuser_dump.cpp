// kvbridge fuser dump: a fuser trainer's inputs, computed by kvbridge itself (fuser/train/README.md).
//
// For each example {context, continuation} of a JSON-lines file it tokenizes the context the way an
// agent in receiver mode re-reads a sharer's cache (agent/context_fuser.h: the sharer's tokens →
// its text → the receiver's tokens with BOS), aligns sharer tokens one per receiver position with
// the fuser's strategy (fuser/align.h; identity when alignment is off), prefills them on the sharer
// and writes one safetensors file:
//   receiver_ids     I32 [total]        each example's context tokens, then its continuation's
//   example_offsets  I32 [n + 1]        example i is receiver_ids[offsets[i], offsets[i + 1])
//   context_lengths  I32 [n]            its first context_lengths[i] tokens are the context
//   sharer_ids       I32 [contexts]     the aligned sharer tokens of every context, in order
//   sharer.{l}.k/.v  F32 [contexts, n_head_kv * head_dim]   the sharer's post-RoPE K/V of layer l
//                                       at those tokens, for every layer the fuser's map uses
// plus metadata (the pair, the fuser's config, counts). Nothing of the receiver's cache is written:
// the trainer computes it with its own receiver forward, checked against kvbridge's.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "client/commands.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "fuser/align.h"
#include "fuser/fuser_config.h"
#include "kernels/registry.h"

namespace kvb::cli {

namespace {

struct DumpArgs {
  std::string fuser, sharer, receiver, tok_sharer, tok_receiver, examples, out;
  int32_t threads = 2;
  int32_t max_tokens = 0;  // per example; 0 = the receiver's context length
};

struct Example {
  fuser::ExampleTokens t;
  std::vector<int32_t> sharer_ids;  // aligned: one sharer token per receiver context token
};

struct Dump {
  std::vector<int32_t> receiver_ids, offsets{0}, context_lengths, sharer_ids;
  std::vector<std::vector<float>> k, v;  // per used sharer layer: [contexts][cell]
  int64_t n_multi = 0, n_empty = 0, skipped = 0, truncated = 0;
};

// Receiver tokens of one example, as an agent in receiver mode sees them.
Example tokenize(const Model& sharer, const Model& receiver, const fuser::FuserConfig& cfg, const std::string& context,
                 const std::string& continuation, Dump& d) {
  const Tokenizer& st = *sharer.tokenizer;
  const Tokenizer& rt = *receiver.tokenizer;
  Example e{fuser::example_tokens(st, rt, context, continuation), {}};
  if (!cfg.align_enabled) {
    e.sharer_ids = e.t.receiver_context;
    return e;
  }
  auto a = fuser::align_tokens(e.t.receiver_context, rt, fuser::local_encoder(st), fuser::local_piece_texts(st),
                               fuser::sharer_specials(st), cfg.align_strategy);
  exit_on_error(a.status());
  d.n_multi += a->n_multi;
  d.n_empty += a->n_empty;
  e.sharer_ids = std::move(a->sharer_ids);
  return e;
}

// The sharer's K/V of `ids` for `layers`, appended to d.k / d.v (one entry per layer, in order).
void sharer_kv(ModelRunner& runner, const std::vector<int32_t>& layers, const std::vector<int32_t>& ids, Dump& d) {
  auto cache = runner.new_cache(int32_t(ids.size()));
  exit_on_error(cache.status());
  std::vector<float> logits(size_t(runner.model().config.n_vocab));
  exit_on_error(runner.forward(**cache, ids, logits));
  for (size_t i = 0; i < layers.size(); ++i) {
    for (bool is_v : {false, true}) {
      const Tensor t = (*cache)->used_rows(layers[i], is_v);
      const float* p = t.as<const float>();
      std::vector<float>& dst = is_v ? d.v[i] : d.k[i];
      dst.insert(dst.end(), p, p + t.numel());
    }
  }
}

std::vector<SafetensorsTensor> tensors(const Dump& d, const std::vector<int32_t>& layers, int64_t cell) {
  const int64_t n = int64_t(d.context_lengths.size()), contexts = int64_t(d.sharer_ids.size());
  std::vector<SafetensorsTensor> t = {
      {"receiver_ids", DType::kI32, {int64_t(d.receiver_ids.size())}, d.receiver_ids.data()},
      {"example_offsets", DType::kI32, {n + 1}, d.offsets.data()},
      {"context_lengths", DType::kI32, {n}, d.context_lengths.data()},
      {"sharer_ids", DType::kI32, {contexts}, d.sharer_ids.data()},
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    t.push_back({fmt::format("sharer.{}.k", layers[i]), DType::kF32, {contexts, cell}, d.k[i].data()});
    t.push_back({fmt::format("sharer.{}.v", layers[i]), DType::kF32, {contexts, cell}, d.v[i].data()});
  }
  return t;
}

void run_dump(const DumpArgs& a) {
  auto cfg = fuser::load_fuser_config(a.fuser);
  exit_on_error(cfg.status().with_context(a.fuser));
  auto sharer = load_model(a.sharer, LoadOptions{a.tok_sharer});
  exit_on_error(sharer.status());
  auto receiver = load_model(a.receiver, LoadOptions{a.tok_receiver});
  exit_on_error(receiver.status());
  const ModelConfig& sc = (*sharer)->config;
  if (sc.n_layer != cfg->sharer.n_layer || sc.n_head_kv != cfg->sharer.n_head_kv ||
      sc.head_dim != cfg->sharer.head_dim) {
    exit_on_error(failed_precondition(fmt::format("{} is not the sharer of fuser {}", a.sharer, a.fuser)));
  }
  const std::set<int32_t> used(cfg->layer_map.begin(), cfg->layer_map.end());
  const std::vector<int32_t> layers(used.begin(), used.end());
  auto backend = cpu_device().create_backend();
  exit_on_error(backend.status());
  (*backend)->set_n_threads(std::max(1, a.threads));
  auto runner = ModelRunner::create(**sharer, **backend);
  exit_on_error(runner.status());

  const int32_t max_tokens = a.max_tokens > 0 ? a.max_tokens : (*receiver)->config.n_ctx_train;
  std::ifstream in(a.examples);
  if (!in) exit_on_error(not_found("cannot open " + a.examples));
  Dump d;
  d.k.resize(layers.size());
  d.v.resize(layers.size());
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("context") || !j["context"].is_string() ||
        !j.contains("continuation") || !j["continuation"].is_string()) {
      exit_on_error(invalid_argument(
          fmt::format("{}:{}: expected {{\"context\": string, \"continuation\": string}}", a.examples, lineno)));
    }
    Example e = tokenize(**sharer, **receiver, *cfg, j["context"].get<std::string>(),
                         j["continuation"].get<std::string>(), d);
    bool truncated = false;
    if (!fuser::fit_example(e.t, size_t(max_tokens), &truncated)) {
      ++d.skipped;
      continue;
    }
    d.truncated += truncated ? 1 : 0;
    const std::vector<int32_t>& context = e.t.receiver_context;
    sharer_kv(**runner, layers, e.sharer_ids, d);
    d.receiver_ids.insert(d.receiver_ids.end(), context.begin(), context.end());
    d.receiver_ids.insert(d.receiver_ids.end(), e.t.continuation.begin(), e.t.continuation.end());
    d.offsets.push_back(int32_t(d.receiver_ids.size()));
    d.context_lengths.push_back(int32_t(context.size()));
    d.sharer_ids.insert(d.sharer_ids.end(), e.sharer_ids.begin(), e.sharer_ids.end());
    if (d.context_lengths.size() % 64 == 0) {
      std::fprintf(stderr, "\rdump: %zu examples", d.context_lengths.size());
      std::fflush(stderr);
    }
  }
  if (d.context_lengths.empty()) exit_on_error(invalid_argument(a.examples + ": no usable example"));
  const std::map<std::string, std::string> meta = {
      {"format", "kvbridge-fuser-dump"},
      {"version", "1"},
      {"fuser_config", fuser::fuser_config_to_json(*cfg)},
      {"sharer", a.sharer},
      {"receiver", a.receiver},
      {"examples", a.examples},
      {"n_examples", std::to_string(d.context_lengths.size())},
      {"skipped", std::to_string(d.skipped)},
      {"truncated", std::to_string(d.truncated)},
  };
  exit_on_error(write_safetensors(a.out, tensors(d, layers, int64_t(sc.n_head_kv) * sc.head_dim), meta));
  std::fprintf(stderr, "\r");
  std::printf(
      "wrote %s: %zu examples (%lld skipped: context too long or continuation under 2 tokens; %lld continuations "
      "truncated to %d tokens), %zu receiver tokens, %zu context tokens, sharer layers %s; alignment %s (%lld tokens "
      "re-encoded to several, %lld to none)\n",
      a.out.c_str(), d.context_lengths.size(), static_cast<long long>(d.skipped), static_cast<long long>(d.truncated),
      max_tokens, d.receiver_ids.size(), d.sharer_ids.size(), fmt::format("{}", fmt::join(layers, ",")).c_str(),
      cfg->align_enabled ? "on" : "off", static_cast<long long>(d.n_multi), static_cast<long long>(d.n_empty));
}

}  // namespace

void register_fuser_dump(CLI::App& fuser) {
  auto a = std::make_shared<DumpArgs>();
  CLI::App* c = fuser.add_subcommand("dump", "Write a fuser trainer's inputs: tokens and the sharer's K/V per example");
  c->add_option("--fuser", a->fuser, "Fuser directory whose config.json gives the pair, layer map and alignment")
      ->required();
  c->add_option("--sharer", a->sharer, "Sharer model file")->required();
  c->add_option("--receiver", a->receiver, "Receiver model file (its tokenizer)")->required();
  c->add_option("--tokenizer-sharer", a->tok_sharer, "Tokenizer of a llama2.c sharer (tokenizer.bin)");
  c->add_option("--tokenizer-receiver", a->tok_receiver, "Tokenizer of a llama2.c receiver");
  c->add_option("--examples", a->examples, "JSON lines: {\"context\": ..., \"continuation\": ...}")->required();
  c->add_option("-o,--out", a->out, "Output safetensors file")->required();
  c->add_option("--max-tokens", a->max_tokens, "Receiver tokens per example (default: its context length)");
  c->add_option("--threads", a->threads, "CPU threads for the sharer")->capture_default_str();
  c->callback([a] { run_dump(*a); });
}

}  // namespace kvb::cli
