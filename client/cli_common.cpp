#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "client/commands.h"

namespace kvb::cli {

void exit_on_error(const Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "kvbridge: %s\n", s.to_string().c_str());
  throw CliExit{1};
}

CLI::Option* add_chat_flags(CLI::App* cmd, ChatFlags& f) {
  CLI::Option* m = cmd->add_option(
      "--messages", f.messages, "Chat: a JSON array of {role, content} ('-' = stdin), rendered with the chat template");
  cmd->add_option("--chat-template", f.template_name, "Chat template by name (default: the model's)")->needs(m);
  cmd->add_flag("--no-thinking", f.no_thinking, "qwen3 chat: enable_thinking=false")->needs(m);
  cmd->add_flag("--no-generation-prompt", f.no_generation_prompt, "Chat: do not end with the assistant header")
      ->needs(m);
  return m;
}

Result<std::string> read_input_file(const std::string& path) {
  std::stringstream ss;
  if (path == "-") {
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) return not_found("cannot open " + path);
  ss << f.rdbuf();
  if (f.bad()) return invalid_argument("error reading " + path);
  return ss.str();
}

}  // namespace kvb::cli
