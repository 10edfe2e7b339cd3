// kvbridge synth: random-weight models of real shapes (engine/synth.h) as a GGUF file or a Hugging
// Face directory, and the preset list.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "client/commands.h"
#include "engine/synth.h"

namespace kvb::cli {

namespace {

int64_t n_params(const ModelConfig& c) {
  int64_t n = 0;
  for (const LlamaTensorSlot& s : llama_tensor_slots(c)) {
    if (s.weight != LlamaWeight::kRopeFreqs) n += s.rows * s.cols;
  }
  return n;
}

// "5GB", "100M", "4096": bytes, with an optional K/M/G (powers of 1000) or KiB/MiB/GiB suffix.
std::optional<uint64_t> parse_size(const std::string& text) {
  size_t end = 0;
  uint64_t v = 0;
  try {
    v = std::stoull(text, &end);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const std::string unit = text.substr(end);
  const std::pair<const char*, uint64_t> units[] = {{"", 1},         {"B", 1},           {"K", 1000},
                                                   {"KB", 1000},    {"KiB", 1024},      {"M", 1000000},
                                                   {"MB", 1000000}, {"MiB", 1 << 20},   {"G", 1000000000},
                                                   {"GB", 1000000000}, {"GiB", 1 << 30}};
  for (const auto& [name, mult] : units) {
    if (unit == name && v > 0) return v * mult;
  }
  return std::nullopt;
}

std::string human_count(int64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f}B", double(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.1f}M", double(n) / 1e6);
  return fmt::format("{:.0f}K", double(n) / 1e3);
}

void print_shapes() {
  std::printf("%-12s %-5s %6s %6s %9s %8s %6s %7s %8s %9s  %s\n", "shape", "arch", "layers", "n_embd", "heads/kv",
              "head_dim", "n_ff", "vocab", "ctx", "params", "note");
  for (const SynthShape& s : synth_shapes()) {
    const ModelConfig& c = s.config;
    std::printf("%-12s %-5s %6d %6d %6d/%-2d %8d %6d %7d %8d %9s  %s\n", s.name.c_str(),
                std::string(arch_name(c.arch)).c_str(), c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim,
                c.n_ff, c.n_vocab, c.n_ctx_train, human_count(n_params(c)).c_str(), s.note.c_str());
  }
  std::printf("overrides: NAME:key=N,... with n_layer, n_vocab, n_ctx, n_embd, n_ff, n_head, n_head_kv, head_dim\n"
              "           (e.g. stories110M:n_layer=2, "
              "qwen3-0.6b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16)\n");
}

}  // namespace

void register_synth(CLI::App& app) {
  struct Args {
    std::string shape, out, dtype = "f32", format = "gguf", shard_size = "5GB";
    uint64_t seed = 1;
    bool list = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("synth", "Write a random-weight model of a real shape (GGUF or Hugging Face)");
  auto* list = c->add_flag("--list", a->list, "List the shape presets and exit");
  c->add_option("--shape", a->shape, "Preset name, optionally with overrides (NAME:n_layer=2,n_vocab=1024)")
      ->excludes(list);
  c->add_option("-o,--out", a->out, "Output GGUF path, or directory for --format hf")->excludes(list);
  c->add_option("--format", a->format,
                "gguf: one GGUF file; hf: a Hugging Face directory (config.json, safetensors, tokenizer files)")
      ->check(CLI::IsMember({"gguf", "hf"}))
      ->capture_default_str();
  c->add_option("--dtype", a->dtype, "Matrix dtype (hf: f32, f16 or bf16); norms and biases stay f32")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}))
      ->capture_default_str();
  c->add_option("--shard-size", a->shard_size,
                "hf: split the weights into safetensors shards above this size (bytes, or 100MB, 2GiB...)")
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
    const DType dtype = *dtype_from_name(a->dtype);
    uint64_t size = 0;
    std::error_code ec;
    if (a->format == "hf") {
      const std::optional<uint64_t> shard = parse_size(a->shard_size);
      if (!shard) throw CLI::ValidationError("--shard-size", "expected a positive size such as 4096, 100MB or 2GiB");
      exit_on_error(write_synth_hf(a->shape, dtype, a->seed, a->out, SynthHfOptions{*shard}, progress));
      for (const auto& e : std::filesystem::directory_iterator(a->out, ec)) {
        if (e.is_regular_file()) size += e.file_size();
      }
    } else {
      exit_on_error(write_synth_gguf(a->shape, dtype, a->seed, a->out, progress));
      size = std::filesystem::file_size(a->out, ec);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "kvbridge: wrote %s: synthetic %s %s (%s params), %s, seed %llu, %.2f MiB in %.2f s\n",
                 a->out.c_str(), shape->name.c_str(), a->format.c_str(), human_count(n_params(shape->config)).c_str(),
                 a->dtype.c_str(), static_cast<unsigned long long>(a->seed), double(size) / (1 << 20), secs);
  });
}

}  // namespace kvb::cli
