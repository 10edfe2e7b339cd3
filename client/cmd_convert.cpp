// kvbridge convert: any loadable model (GGUF, llama2.c .bin + tokenizer, Hugging Face directory) → GGUF v3.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "client/commands.h"
#include "engine/gguf_export.h"
#include "engine/model.h"

namespace kvb::cli {

namespace {

// "\r[ 12/47]  34%" on a terminal; nothing when stderr is redirected.
ExportProgress terminal_progress() {
  if (!::isatty(STDERR_FILENO)) return {};
  return [](size_t done, size_t total, uint64_t bytes, uint64_t total_bytes) {
    std::fprintf(stderr, "\r[%4zu/%zu] %3.0f%%", done, total, total_bytes ? 100.0 * double(bytes) / double(total_bytes) : 100.0);
    if (done == total) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  };
}

}  // namespace

void register_convert(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, out, dtype;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("convert", "Write any loadable model as a GGUF file");
  c->add_option("-m,--model", a->model, "Model: GGUF, llama2.c .bin, or a Hugging Face directory")->required();
  c->add_option("--tokenizer", a->tokenizer, "Tokenizer file (llama2.c tokenizer.bin)");
  c->add_option("-o,--out", a->out, "Output GGUF path")->required();
  c->add_option("--dtype", a->dtype, "Matrix dtype (default: keep the model's); norms stay f32")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}));
  c->callback([a] {
    const auto t0 = std::chrono::steady_clock::now();
    auto model = load_model(a->model, LoadOptions{a->tokenizer});
    exit_on_error(model.status());
    const Model& m = **model;
    if (!m.tokenizer) {
      std::fprintf(stderr, "kvbridge: warning: %s has no tokenizer (pass --tokenizer); writing weights only\n",
                   a->model.c_str());
    }
    std::optional<DType> dtype;
    if (!a->dtype.empty()) dtype = dtype_from_name(a->dtype);
    exit_on_error(write_model_gguf(m, a->out, dtype, terminal_progress()));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::error_code ec;
    const auto size = std::filesystem::file_size(a->out, ec);
    std::fprintf(stderr, "kvbridge: wrote %s (%zu tensors, matrices %s, %.2f MiB) from %s in %.2f s\n",
                 a->out.c_str(), llama_tensor_slots(m.config).size(), a->dtype.empty() ? "as stored" : a->dtype.c_str(),
                 ec ? 0.0 : double(size) / (1 << 20), describe(m).c_str(), secs);
  });
}

}  // namespace kvb::cli
