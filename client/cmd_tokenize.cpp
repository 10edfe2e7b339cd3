// kvbridge tokenize: prints the ids (and pieces) a tokenizer gives a text, or a batch of texts.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/vocab_loaders.h"

namespace kvb::cli {

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A tokenizer without a model: a Hugging Face tokenizer directory, a GGUF's vocab, or a llama2.c
// tokenizer.bin.
Result<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path, const std::string& pre) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    KVB_ASSIGN_OR_RETURN(Vocab v, read_hf_vocab(path, pre));
    return Tokenizer::create(std::move(v));
  }
  if (ends_with(path, ".gguf")) {
    KVB_ASSIGN_OR_RETURN(auto f, GgufFile::open(path));
    KVB_ASSIGN_OR_RETURN(Vocab v, read_gguf_vocab(*f));
    return Tokenizer::create(std::move(v));
  }
  KVB_ASSIGN_OR_RETURN(Vocab v, read_llama2c_vocab(path, -1));
  return Tokenizer::create(std::move(v));
}

}  // namespace

void register_tokenize(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, text, batch, pre;
    bool no_bos = false, pieces = false, parse_special = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("tokenize", "Print the token ids of a text");
  c->add_option("-m,--model", a->model, "Model file (GGUF or llama2.c .bin)");
  c->add_option("--tokenizer", a->tokenizer,
                "Tokenizer to use instead of the model's: a Hugging Face tokenizer directory "
                "(tokenizer.json, vocab.json + merges.txt or encoder.json + vocab.bpe), a .gguf "
                "file's vocab, or a llama2.c tokenizer.bin; -m is then optional");
  c->add_option("--pre", a->pre,
                "Pre-tokenizer for a Hugging Face directory whose files do not name one "
                "(gpt2, qwen2, llama-bpe)");
  CLI::Option* text_opt = c->add_option("-p,--prompt,text", a->text, "Text to tokenize");
  CLI::Option* batch_opt = c->add_option("--batch", a->batch,
                "JSON file ('-' for stdin) holding an array of strings; prints a JSON array of id "
                "arrays, one per string");
  c->add_flag("--no-bos", a->no_bos, "Do not add BOS");
  c->add_flag("--parse-special", a->parse_special,
              "Match control-token text such as <|im_start|> as those tokens");
  c->add_flag("--pieces", a->pieces, "Print 'id<TAB>piece' lines instead of a list of ids");
  c->callback([a, text_opt, batch_opt] {
    if ((text_opt->count() > 0) == (batch_opt->count() > 0)) {
      exit_on_error(invalid_argument("pass exactly one of a text (-p) and --batch"));
    }
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> own;
    const Tokenizer* tok = nullptr;
    std::error_code ec;
    const bool standalone = !a->tokenizer.empty() &&
                            (a->model.empty() || std::filesystem::is_directory(a->tokenizer, ec) ||
                             ends_with(a->tokenizer, ".gguf"));
    if (standalone) {
      auto t = load_tokenizer(a->tokenizer, a->pre);
      exit_on_error(t.status());
      own = std::move(t).value();
      tok = own.get();
    } else {
      if (a->model.empty()) exit_on_error(invalid_argument("pass -m MODEL or --tokenizer PATH"));
      auto m = load_model(a->model, LoadOptions{a->tokenizer});
      exit_on_error(m.status());
      model = std::move(m).value();
      if (!model->tokenizer) {
        exit_on_error(invalid_argument(fmt::format("{} has no tokenizer; pass --tokenizer", a->model)));
      }
      tok = model->tokenizer.get();
    }
    EncodeOptions opt;
    opt.add_bos = !a->no_bos;
    opt.parse_special = a->parse_special;

    if (batch_opt->count() > 0) {
      auto in = read_input_file(a->batch);
      exit_on_error(in.status());
      const auto texts = nlohmann::json::parse(*in, nullptr, /*allow_exceptions=*/false);
      if (!texts.is_array()) exit_on_error(invalid_argument(a->batch + ": not a JSON array of strings"));
      nlohmann::json out = nlohmann::json::array();
      for (const auto& t : texts) {
        if (!t.is_string()) exit_on_error(invalid_argument(a->batch + ": not a JSON array of strings"));
        out.push_back(tok->encode(t.get_ref<const std::string&>(), opt));
      }
      std::printf("%s\n", out.dump().c_str());
      return;
    }
    const auto ids = tok->encode(a->text, opt);
    if (a->pieces) {
      for (int32_t id : ids) std::printf("%d\t%s\n", id, tok->vocab().pieces[size_t(id)].c_str());
    } else {
      std::printf("[%s]\n", fmt::format("{}", fmt::join(ids, ", ")).c_str());
    }
  });
}

}  // namespace kvb::cli
