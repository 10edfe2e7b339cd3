// kvbridge info: a model summary (format, shapes, dtypes, tokenizer, memory), or an agent's
// (--agent, client/cmd_agent_info.cpp).
#include <fmt/format.h>

#include <cstdio>

#include "client/cli_remote.h"
#include "client/commands.h"
#include "engine/model.h"
#include "kernels/registry.h"

namespace kvb::cli {

void register_info(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, agent;
    RemoteFlags remote;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("info", "Print a model summary, or an agent's");
  auto* model_opt = c->add_option("-m,--model,model", a->model, "Model: GGUF, llama2.c .bin, or a Hugging Face directory");
  c->add_option("--tokenizer", a->tokenizer, "Tokenizer file (llama2.c tokenizer.bin)");
  c->add_option("--agent", a->agent, "Ask this agent (host:port) instead")->excludes(model_opt);
  add_remote_flags(c, a->remote);
  c->callback([a] {
    if (!a->agent.empty()) return print_agent_info(a->agent, a->remote);
    if (a->model.empty()) throw CLI::RequiredError("--model or --agent");
    auto model = load_model(a->model, LoadOptions{a->tokenizer});
    exit_on_error(model.status());
    const Model& m = **model;
    const ModelConfig& cfg = m.config;
    const char* format = m.format == ModelFormat::kGguf  ? "gguf"
                         : m.format == ModelFormat::kHf  ? "hugging face"
                                                         : "llama2.c";
    std::printf("file         %s (%s)\n", m.path.c_str(), format);
    std::printf("arch         %s\n", std::string(arch_name(cfg.arch)).c_str());
    std::printf("layers       %d\n", cfg.n_layer);
    std::printf("n_embd       %d\n", cfg.n_embd);
    std::printf("heads        %d query, %d kv, head_dim %d\n", cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    std::printf("n_ff         %d\n", cfg.n_ff);
    std::printf("vocab        %d\n", cfg.n_vocab);
    std::printf("context      %d\n", cfg.n_ctx_train);
    std::printf("rope         %s, n_rot %d, theta %g%s\n", cfg.rope.type == RopeType::kNormal ? "normal" : "neox",
                cfg.rope.n_rot, double(cfg.rope.theta_base), cfg.rope_freq_factors.empty() ? "" : ", llama3 scaling");
    if (cfg.has_qkv_bias()) std::printf("attention    q/k/v biases\n");
    if (cfg.has_qk_norm()) std::printf("attention    q/k head norms\n");
    std::printf("norm eps     %g\n", double(cfg.norm_eps));
    std::printf("output       %s\n", cfg.tied_output ? "tied to token embedding" : "separate");
    std::printf("weights      %s, %.2f MiB\n", std::string(dtype_name(m.weights.layers[0].wq.dtype)).c_str(),
                double(m.weight_bytes()) / (1 << 20));
    std::printf("kv per token %.1f KiB (f32)\n", 2.0 * cfg.n_layer * cfg.n_embd_kv() * 4 / 1024.0);
    if (m.tokenizer) {
      std::printf("tokenizer    %s, %d pieces, bos %d, eos %d\n",
                  m.tokenizer->vocab().model == Vocab::Model::kBpe ? "bpe" : "spm", m.tokenizer->n_vocab(),
                  m.tokenizer->bos(), m.tokenizer->eos());
    } else if (!m.tokenizer_note.empty()) {
      std::printf("tokenizer    none usable, token ids only (%s)\n", m.tokenizer_note.c_str());
    } else {
      std::printf("tokenizer    none (pass --tokenizer)\n");
    }
    std::printf("device       %s\n", cpu_device().description().c_str());
  });
}

}  // namespace kvb::cli
