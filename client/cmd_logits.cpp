// kvbridge logits (hidden, for checks): the logits of a local model after each of the given token
// ids, as JSON on stdout: {"model": "...", "n_vocab": V, "ids": [...], "logits": [[V floats], ...]}.
// tests/python/check_hf_transformers.py compares them with Hugging Face transformers.
#include <fmt/format.h>

#include <cstdio>
#include <string>
#include <vector>

#include "client/commands.h"
#include "engine/forward.h"
#include "engine/forward_reference.h"
#include "engine/model.h"
#include "kernels/registry.h"

namespace kvb::cli {

void register_logits(CLI::App& app) {
  struct Args {
    std::string model;
    std::vector<int32_t> ids;
    bool reference = false;
    int32_t threads = 1;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("logits", "Print a local model's logits after each token id (JSON)");
  c->group("");  // a debugging aid: not listed in --help
  c->add_option("-m,--model", a->model, "Model: GGUF, llama2.c .bin, or a Hugging Face directory")->required();
  c->add_option("--ids", a->ids, "Token ids, comma separated")->required()->delimiter(',');
  c->add_flag("--reference", a->reference, "Use the scalar reference forward pass instead of the runner");
  c->add_option("--threads", a->threads, "CPU threads for the runner")->capture_default_str();
  c->callback([a] {
    auto model = load_model(a->model);
    exit_on_error(model.status());
    const Model& m = **model;
    const size_t vocab = size_t(m.config.n_vocab);
    std::vector<float> logits(a->ids.size() * vocab);
    if (a->reference) {
      auto cache = KvCache::create(cpu_device().buffer_type(),
                                   KvLayout{m.config.n_layer, m.config.n_head_kv, m.config.head_dim},
                                   int32_t(a->ids.size()));
      exit_on_error(cache.status());
      auto out = forward_reference(m, **cache, a->ids);
      exit_on_error(out.status());
      logits = std::move(out).value();
    } else {
      auto backend = cpu_device().create_backend();
      exit_on_error(backend.status());
      (*backend)->set_n_threads(std::max(1, a->threads));
      auto runner = ModelRunner::create(m, **backend);
      exit_on_error(runner.status());
      auto cache = (*runner)->new_cache(int32_t(a->ids.size()));
      exit_on_error(cache.status());
      exit_on_error((*runner)->forward(**cache, a->ids, logits, /*all_logits=*/true));
    }
    std::string out = fmt::format("{{\"model\": \"{}\", \"n_vocab\": {}, \"ids\": [{}], \"logits\": [", describe(m),
                                  vocab, fmt::join(a->ids, ", "));
    for (size_t t = 0; t < a->ids.size(); ++t) {
      out += t ? ",\n[" : "\n[";
      for (size_t i = 0; i < vocab; ++i) {
        if (i) out += ", ";
        out += fmt::format("{:.9g}", logits[t * vocab + i]);
      }
      out += "]";
    }
    out += "]}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  });
}

}  // namespace kvb::cli
