// kvbridge chat-template: renders a conversation with a model's chat template (or a named one)
// and prints the prompt text, or its token ids with --ids.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "engine/chat_template.h"
#include "engine/model.h"

namespace kvb::cli {

namespace {

struct ChatTemplateArgs {
  std::string model, template_file, format, messages = "-", date;
  bool no_generation_prompt = false, no_thinking = false, ids = false;
};

// A tokenizer_config.json (its "chat_template" string) or a raw Jinja file.
Result<std::string> template_source_from_file(const std::string& path) {
  KVB_ASSIGN_OR_RETURN(std::string text, read_input_file(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return text;
  if (!j.contains("chat_template") || !j["chat_template"].is_string()) {
    return invalid_argument(fmt::format("{}: no string \"chat_template\"", path));
  }
  return j["chat_template"].get<std::string>();
}

void run_chat_template(const ChatTemplateArgs& a) {
  std::unique_ptr<Model> model;
  if (!a.model.empty()) {
    auto m = load_model(a.model);
    exit_on_error(m.status());
    model = std::move(*m);
  }
  if (a.ids && (!model || !model->tokenizer)) {
    exit_on_error(invalid_argument("--ids needs --model with a tokenizer"));
  }
  Result<ChatTemplate> tmpl = invalid_argument("give --model, --template or --format");
  if (!a.format.empty()) {
    tmpl = ChatTemplate::from_name(a.format);
  } else if (!a.template_file.empty()) {
    auto src = template_source_from_file(a.template_file);
    exit_on_error(src.status());
    tmpl = ChatTemplate::from_source(*src);
  } else if (model && model->tokenizer) {
    tmpl = ChatTemplate::from_source(model->tokenizer->vocab().chat_template);
  }
  exit_on_error(tmpl.status());
  auto json = read_input_file(a.messages);
  exit_on_error(json.status());
  auto messages = parse_chat_messages(*json);
  exit_on_error(messages.status());
  ChatOptions opt;
  opt.add_generation_prompt = !a.no_generation_prompt;
  if (a.no_thinking) opt.enable_thinking = false;
  if (!a.date.empty()) opt.date_string = a.date;
  auto text = tmpl->render(*messages, opt);
  exit_on_error(text.status());
  if (!a.ids) {
    std::fwrite(text->data(), 1, text->size(), stdout);
    return;
  }
  const std::vector<int32_t> ids = model->tokenizer->encode(*text, chat_encode_options());
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
  std::printf("\n");
}

}  // namespace

void register_chat_template(CLI::App& app) {
  auto a = std::make_shared<ChatTemplateArgs>();
  CLI::App* c = app.add_subcommand("chat-template", "Render a conversation with a chat template");
  c->add_option("--model", a->model, "Model (its tokenizer's chat template; --ids tokenizes with it)");
  c->add_option("--template", a->template_file, "tokenizer_config.json or a Jinja template file");
  c->add_option("--format", a->format, "Template by name: chatml, qwen2.5, qwen3, llama3, llama3.1");
  c->add_option("--messages", a->messages, "JSON array of {role, content} ('-' = stdin)");
  c->add_flag("--no-generation-prompt", a->no_generation_prompt, "Do not end with the assistant header");
  c->add_flag("--no-thinking", a->no_thinking, "qwen3: enable_thinking=false");
  c->add_option("--date", a->date, "llama3.1: the Today Date line (default 26 Jul 2024)");
  c->add_flag("--ids", a->ids, "Print the token ids instead of the text");
  c->callback([a] { run_chat_template(*a); });
}

}  // namespace kvb::cli
