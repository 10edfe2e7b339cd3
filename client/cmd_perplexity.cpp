// kvbridge perplexity: a local model's perplexity over a text file, computed as llama.cpp's
// llama-perplexity computes it (engine/perplexity.h: windows of --ctx ids from an empty cache, BOS
// first, the second half of each window scored), and its KL divergence against a saved base run
// (--kl-divergence-base FILE [--kl-divergence]; the file is llama.cpp's format, see
// engine/perplexity_base.h).
//
// stdout: the running estimate "[1]12.3456,[2]..." and "Final estimate: PPL = X +/- Y", or in
// KL-divergence mode llama.cpp's per-window table and final statistics. stderr: progress
// (windows done / total, tokens/s, ETA). Exit 1 with a message for a text too short for one window,
// a context beyond the model's, or a base file of another vocabulary or tokenization.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "client/commands.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/model_identity.h"
#include "engine/perplexity_run.h"
#include "kernels/registry.h"

namespace kvb::cli {
namespace {

struct PplArgs {
  std::string model, tokenizer, file, base;
  int32_t ctx = 0;  // 0: 512, or the model's training context when that is smaller
  int32_t threads = int32_t(std::max(1u, std::thread::hardware_concurrency()));
  int32_t batch = 512;
  int32_t chunks = 0;  // 0: all
  bool kl_divergence = false;
};

// The model, its CPU backend and runner, kept alive together.
struct Session {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ModelRunner> runner;
  int32_t bos = -1;  // replaces each window's first id (-1: the vocab adds none)
};

Session open_session(const PplArgs& a) {
  Session s;
  auto model = load_model(a.model, LoadOptions{a.tokenizer});
  exit_on_error(model.status());
  s.model = std::move(model).value();
  const Model& m = *s.model;
  if (!m.tokenizer) {
    exit_on_error(failed_precondition(fmt::format("{} has no tokenizer{}; pass --tokenizer", a.model,
                                                  m.tokenizer_note.empty() ? "" : " (" + m.tokenizer_note + ")")));
  }
  if (m.tokenizer->vocab().add_bos && m.tokenizer->bos() >= 0) s.bos = m.tokenizer->bos();
  auto backend = cpu_device().create_backend();
  exit_on_error(backend.status());
  s.backend = std::move(backend).value();
  s.backend->set_n_threads(std::max(1, a.threads));
  RunnerOptions ro;
  ro.n_batch = std::max(1, a.batch);
  auto runner = ModelRunner::create(m, *s.backend, ro);
  exit_on_error(runner.status());
  s.runner = std::move(runner).value();
  return s;
}

// --ctx against the model's training context (llama.cpp only warns; kvbridge refuses).
int32_t checked_ctx(const PplArgs& a, const Model& m, int32_t wanted) {
  const int32_t train = m.config.n_ctx_train;
  if (wanted == 0) return train > 0 ? std::min(512, train) : 512;
  if (train > 0 && wanted > train) {
    exit_on_error(invalid_argument(fmt::format("--ctx {} is larger than the context {} was trained for ({})", wanted,
                                               a.model, train)));
  }
  return wanted;
}

// The text as llama-perplexity reads -f: the whole file minus one trailing newline, tokenized
// with BOS (when the vocab adds one), control-token text not parsed.
std::vector<int32_t> tokenize_file(const std::string& path, const Model& m) {
  auto text = read_input_file(path);
  exit_on_error(text.status());
  std::string& t = *text;
  if (!t.empty() && t.back() == '\n') t.pop_back();
  return m.tokenizer->encode(t, EncodeOptions{});
}

void print_progress(const ppl::ChunkProgress& p) {
  const double tps = p.elapsed_s > 0 ? double(p.tokens) / p.elapsed_s : 0.0;
  const double eta = p.done > 0 ? p.elapsed_s / p.done * (p.total - p.done) : 0.0;
  // One line rewritten in place when only stderr is a terminal; a line per window otherwise.
  const bool tty = isatty(fileno(stderr)) && !isatty(fileno(stdout));
  std::fprintf(stderr, "%sperplexity: %d/%d windows, %.0f tokens/s, ETA %d:%02d%s", tty ? "\r" : "", p.done, p.total,
               tps, int(eta) / 60, int(eta) % 60, tty && p.done < p.total ? "" : "\n");
  std::fflush(stderr);
}

void run_perplexity_cmd(const PplArgs& a) {
  Session s = open_session(a);
  const Model& m = *s.model;
  const int32_t n_ctx = checked_ctx(a, m, a.ctx);
  const std::vector<int32_t> ids = tokenize_file(a.file, m);
  auto plan = ppl::plan_windows(ids.size(), n_ctx, a.chunks);
  exit_on_error(plan.status().with_context(a.file));
  std::fprintf(stderr, "perplexity: %zu tokens, %d windows of %d, scoring %d positions each, batch %d, %d threads\n",
               ids.size(), plan->n_chunk, n_ctx, plan->n_scored(), a.batch, a.threads);

  std::unique_ptr<ppl::BaseWriter> writer;
  if (!a.base.empty()) {
    const ppl::BaseHeader h{n_ctx, m.config.n_vocab, plan->n_chunk};
    auto w = ppl::BaseWriter::create(a.base, h, std::span(ids).first(size_t(h.n_chunk) * size_t(n_ctx)));
    exit_on_error(w.status());
    writer = std::move(w).value();
  }
  ppl::PplRunOptions opt;
  opt.bos = s.bos;
  opt.save = writer.get();
  opt.on_chunk = [](const ppl::ChunkProgress& p, const ppl::NllStats& st) {
    std::printf("[%d]%.4f,", p.done, st.ppl());
    std::fflush(stdout);
    print_progress(p);
  };
  auto stats = ppl::run_perplexity(*s.runner, ids, *plan, opt);
  exit_on_error(stats.status());
  std::printf("\n");
  if (writer) {
    exit_on_error(writer->finish({model_identity(m).tokenizer_hash, s.bos}));
    std::fprintf(stderr, "perplexity: saved the base logits to %s (%ju bytes)\n", a.base.c_str(),
                 std::filesystem::file_size(a.base));
  }
  if (stats->ppl_err() <= 0) std::fprintf(stderr, "perplexity: no error estimate (too few positions, or no variance)\n");
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", stats->ppl(), stats->ppl_err());
}

// FAILED_PRECONDITION unless the base file was made with this model's vocabulary and tokenization:
// the vocab size always, the tokenizer hash and BOS when the file carries kvbridge's trailer, and
// the ids themselves when --file is given.
void check_base(const PplArgs& a, const Session& s, const ppl::BaseReader& base) {
  const Model& m = *s.model;
  const ppl::BaseHeader& h = base.header();
  const std::string from = fmt::format("{} was written with", a.base);
  if (h.n_vocab != m.config.n_vocab) {
    exit_on_error(failed_precondition(fmt::format("{} a vocabulary of {} ids; {} has {}: different vocabularies", from,
                                                  h.n_vocab, a.model, m.config.n_vocab)));
  }
  if (base.trailer()) {
    const uint64_t hash = model_identity(m).tokenizer_hash;
    if (base.trailer()->tokenizer_hash != hash || base.trailer()->bos != s.bos) {
      exit_on_error(failed_precondition(fmt::format(
          "{} another tokenizer (hash {:016x}, BOS {}; {}: {:016x}, BOS {}): the ids would mean other text", from,
          base.trailer()->tokenizer_hash, base.trailer()->bos, a.model, hash, s.bos)));
    }
  }
  if (a.ctx != 0 && a.ctx != h.n_ctx) {
    exit_on_error(invalid_argument(fmt::format("{} --ctx {}; drop --ctx or pass --ctx {}", from, h.n_ctx, h.n_ctx)));
  }
  checked_ctx(a, m, h.n_ctx);
  if (a.file.empty()) return;
  const std::vector<int32_t> ids = tokenize_file(a.file, m);
  const auto& want = base.ids();
  const size_t n = std::min(ids.size(), want.size());
  const size_t diff = size_t(std::mismatch(want.begin(), want.begin() + ptrdiff_t(n), ids.begin()).first - want.begin());
  if (diff < want.size()) {
    exit_on_error(failed_precondition(fmt::format(
        "{} other ids than {} tokenizes {} to (first difference at token {} of {}): another tokenizer or text", from,
        a.model, a.file, diff, want.size())));
  }
}

void print_kld_row(const ppl::ChunkProgress& p, const ppl::KldStats& st) {
  if (p.done == 1) {
    std::printf("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
                "Δp RMS            Same top p\n");
  }
  const ppl::KldReport r = ppl::kld_report(st, /*with_percentiles=*/false);
  std::printf("%4d    %9.4f ± %9.4f    %10.5f ± %10.5f    %10.5f ± %10.5f    %6.3f ± %6.3f %%    %6.3f ± %6.3f %%\n",
              p.done, r.ppl.mean, r.ppl.err, r.log_ppl_ratio.mean, r.log_ppl_ratio.err, r.kld.mean, r.kld.err,
              100 * r.rms_p_diff.mean, 100 * r.rms_p_diff.err, 100 * r.same_top.mean, 100 * r.same_top.err);
  std::fflush(stdout);
  print_progress(p);
}

void print_kld_report(const ppl::KldReport& r) {
  std::printf("\n====== Perplexity statistics ======\n");
  std::printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", r.ppl.mean, r.ppl.err);
  std::printf("Mean PPL(base)                : %10.6f ± %10.6f\n", r.ppl_base.mean, r.ppl_base.err);
  std::printf("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100 * r.log_ppl_cor);
  std::printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", r.log_ppl_ratio.mean, r.log_ppl_ratio.err);
  std::printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", r.ppl_ratio.mean, r.ppl_ratio.err);
  std::printf("Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", r.ppl_diff.mean, r.ppl_diff.err);
  std::printf("\n====== KL divergence statistics ======\n");
  std::printf("Mean    KLD: %10.6f ± %10.6f\n", r.kld.mean, r.kld.err);
  for (const auto& [label, v] : r.kld_percentiles) std::printf("%-7s KLD: %10.6f\n", label.c_str(), v);
  std::printf("\n====== Token probability statistics ======\n");
  std::printf("Mean    Δp: %6.3f ± %5.3f %%\n", 100 * r.p_diff.mean, 100 * r.p_diff.err);
  for (const auto& [label, v] : r.p_diff_percentiles) std::printf("%-7s Δp: %6.3f%%\n", label.c_str(), 100 * v);
  std::printf("RMS Δp    : %6.3f ± %5.3f %%\n", 100 * r.rms_p_diff.mean, 100 * r.rms_p_diff.err);
  std::printf("Same top p: %6.3f ± %5.3f %%\n", 100 * r.same_top.mean, 100 * r.same_top.err);
}

void run_kld_cmd(const PplArgs& a) {
  Session s = open_session(a);
  auto base = ppl::BaseReader::open(a.base);
  exit_on_error(base.status());
  check_base(a, s, **base);
  const ppl::BaseHeader& h = (*base)->header();
  std::fprintf(stderr, "kl-divergence: %d windows of %d from %s, scoring %d positions each\n", h.n_chunk, h.n_ctx,
               a.base.c_str(), h.n_scored());
  ppl::KldRunOptions opt;
  opt.bos = s.bos;
  opt.on_chunk = print_kld_row;
  auto stats = ppl::run_kl_divergence(*s.runner, **base, opt);
  exit_on_error(stats.status());
  print_kld_report(ppl::kld_report(*stats));
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto a = std::make_shared<PplArgs>();
  CLI::App* c = app.add_subcommand("perplexity", "Perplexity of a local model over a text file (llama-perplexity's "
                                                 "method), or its KL divergence against a saved base run");
  c->add_option("-m,--model", a->model, "Model: GGUF, llama2.c .bin, or a Hugging Face directory")->required();
  c->add_option("--tokenizer", a->tokenizer, "llama2.c tokenizer.bin (or a GGUF whose vocab replaces the model's)");
  c->add_option("-f,--file", a->file, "Text file ('-' = stdin); optional with --kl-divergence (checks the base's ids)");
  c->add_option("-c,--ctx", a->ctx, "Window size in tokens (default 512, or the model's context when smaller)");
  c->add_option("-t,--threads", a->threads, "CPU threads")->capture_default_str();
  c->add_option("-b,--batch", a->batch, "Tokens per forward ubatch")->capture_default_str();
  c->add_option("--chunks", a->chunks, "Evaluate at most this many windows (default all)");
  c->add_option("--kl-divergence-base", a->base,
                "Base logits file: written by a perplexity run, read with --kl-divergence (llama.cpp's format)");
  c->add_flag("--kl-divergence", a->kl_divergence, "Compare the model against --kl-divergence-base");
  c->callback([a] {
    if (a->kl_divergence && a->base.empty()) exit_on_error(invalid_argument("--kl-divergence needs --kl-divergence-base FILE"));
    if (!a->kl_divergence && a->file.empty()) exit_on_error(invalid_argument("--file is required"));
    if (a->kl_divergence) {
      run_kld_cmd(*a);
    } else {
      run_perplexity_cmd(*a);
    }
  });
}

}  // namespace kvb::cli
