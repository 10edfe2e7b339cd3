// kvbridge synth: random-weight llama GGUFs of real shapes (engine/synth.h), and the preset list.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "client/commands.h"
#include "engine/synth.h"

namespace kvb::cli {

namespace {

int64_t n_params(const ModelConfig& c) {
  int64_t n = 0;
  for (const LlamaTensorSlot& s : llama_tensor_slots(c)) n += s.rows * s.cols;
  return n;
}

std::string human_count(int64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f}B", double(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.1f}M", double(n) / 1e6);
  return fmt::format("{:.0f}K", double(n) / 1e3);
}

void print_shapes() {
  std::printf("%-12s %6s %6s %9s %8s %6s %7s %8s %9s  %s\n", "shape", "layers", "n_embd", "heads/kv", "head_dim",
              "n_ff", "vocab", "ctx", "params", "note");
  for (const SynthShape& s : synth_shapes()) {
    const ModelConfig& c = s.config;
    std::printf("%-12s %6d %6d %6d/%-2d %8d %6d %7d %8d %9s  %s\n", s.name.c_str(), c.n_layer, c.n_embd, c.n_head,
                c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab, c.n_ctx_train, human_count(n_params(c)).c_str(),
                s.note.c_str());
  }
  std::printf("overrides: NAME:n_layer=N,n_vocab=N,n_ctx=N (e.g. stories110M:n_layer=2)\n");
}

}  // namespace

void register_synth(CLI::App& app) {
  struct Args {
    std::string shape, out, dtype = "f32";
    uint64_t seed = 1;
    bool list = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("synth", "Write a random-weight GGUF model of a real shape");
  auto* list = c->add_flag("--list", a->list, "List the shape presets and exit");
  c->add_option("--shape", a->shape, "Preset name, optionally with overrides (NAME:n_layer=2,n_vocab=1024)")
      ->excludes(list);
  c->add_option("-o,--out", a->out, "Output GGUF path")->excludes(list);
  c->add_option("--dtype", a->dtype, "Matrix dtype; norms stay f32")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}))
      ->capture_default_str();
  c->add_option("--seed", a->seed, "Random seed (same seed, shape and dtype → identical bytes)")
      ->capture_default_str();
  c->callback([a] {
    if (a->list) {
      print_shapes();
      return;
    }
    if (a->shape.empty()) throw CLI::RequiredError("--shape");
    if (a->out.empty()) throw CLI::RequiredError("--out");
    const auto t0 = std::chrono::steady_clock::now();
    auto shape = find_synth_shape(a->shape);
    exit_on_error(shape.status());
    ExportProgress progress;
    if (::isatty(STDERR_FILENO)) {
      progress = [](size_t done, size_t total, uint64_t bytes, uint64_t total_bytes) {
        std::fprintf(stderr, "\r[%4zu/%zu] %3.0f%%", done, total, 100.0 * double(bytes) / double(total_bytes));
        if (done == total) std::fprintf(stderr, "\r\033[K");
        std::fflush(stderr);
      };
    }
    exit_on_error(write_synth_gguf(a->shape, *dtype_from_name(a->dtype), a->seed, a->out, progress));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::error_code ec;
    const auto size = std::filesystem::file_size(a->out, ec);
    std::fprintf(stderr, "kvbridge: wrote %s: synthetic %s (%s params), %s, seed %llu, %.2f MiB in %.2f s\n",
                 a->out.c_str(), shape->name.c_str(), human_count(n_params(shape->config)).c_str(), a->dtype.c_str(),
                 static_cast<unsigned long long>(a->seed), ec ? 0.0 : double(size) / (1 << 20), secs);
  });
}

}  // namespace kvb::cli
