// kvbridge tokenize: prints the ids (and pieces) a model's tokenizer gives a text.
#include <fmt/format.h>

#include <cstdio>

#include "client/commands.h"
#include "engine/model.h"

namespace kvb::cli {

void register_tokenize(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, text;
    bool no_bos = false, pieces = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("tokenize", "Print the token ids of a text");
  c->add_option("-m,--model", a->model, "Model file (GGUF or llama2.c .bin)")->required();
  c->add_option("--tokenizer", a->tokenizer, "Tokenizer file (llama2.c tokenizer.bin)");
  c->add_option("-p,--prompt,text", a->text, "Text to tokenize")->required();
  c->add_flag("--no-bos", a->no_bos, "Do not add BOS");
  c->add_flag("--pieces", a->pieces, "Print 'id<TAB>piece' lines instead of a list of ids");
  c->callback([a] {
    auto model = load_model(a->model, LoadOptions{a->tokenizer});
    exit_on_error(model.status());
    const Model& m = **model;
    if (!m.tokenizer) exit_on_error(invalid_argument(fmt::format("{} has no tokenizer; pass --tokenizer", a->model)));
    const auto ids = m.tokenizer->encode(a->text, EncodeOptions{!a->no_bos, false});
    if (a->pieces) {
      for (int32_t id : ids) std::printf("%d\t%s\n", id, m.tokenizer->vocab().pieces[size_t(id)].c_str());
    } else {
      std::printf("[%s]\n", fmt::format("{}", fmt::join(ids, ", ")).c_str());
    }
  });
}

}  // namespace kvb::cli
