// The `kvbridge` CLI: each subcommand registers itself on the app and runs through its callback.
//
// A subcommand's callback returns the process exit code through CliExit (thrown only inside the
// CLI, caught in main): 0 success, 1 runtime error (message printed), 2 usage error (CLI11).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "kernels/status.h"

namespace kvb::cli {

struct CliExit {
  int code;
};

// Prints "kvbridge: <status>" to stderr and exits with 1 when the status is not OK.
void exit_on_error(const Status& s);
// The whole file, or standard input for "-". NOT_FOUND when it cannot be opened.
Result<std::string> read_input_file(const std::string& path);

// --messages FILE, --chat-template NAME, --no-thinking, --no-generation-prompt: chat input as a
// JSON array of {role, content} objects, rendered with the model's (or the named) chat template.
struct ChatFlags {
  std::string messages, template_name;
  bool no_thinking = false, no_generation_prompt = false;
  bool given() const { return !messages.empty(); }
};
// Registers the flags; returns the --messages option (for excludes/needs).
CLI::Option* add_chat_flags(CLI::App* cmd, ChatFlags& flags);

void register_generate(CLI::App& app);  // client/cmd_generate.cpp
void register_tokenize(CLI::App& app);  // client/cmd_tokenize.cpp
void register_info(CLI::App& app);      // client/cmd_info.cpp
void register_convert(CLI::App& app);   // client/cmd_convert.cpp
void register_synth(CLI::App& app);     // client/cmd_synth.cpp
void register_logits(CLI::App& app);    // client/cmd_logits.cpp (hidden: logits as JSON)
void register_perplexity(CLI::App& app);  // client/cmd_perplexity.cpp (and KL divergence)
// Remote commands (flags shared through client/cli_remote.h).
void register_prefill(CLI::App& app);   // client/cmd_prefill.cpp
void register_pass(CLI::App& app);      // client/cmd_pass.cpp
void register_caches(CLI::App& app);    // client/cmd_caches.cpp
void register_cache(CLI::App& app);     // client/cmd_cache.cpp: save|load|drop|pin
void register_fuse(CLI::App& app);      // client/cmd_fuse.cpp
void register_fuser(CLI::App& app);     // client/cmd_fuser.cpp: info|synth
void register_fuser_dump(CLI::App& fuser);  // client/cmd_fuser_dump.cpp: fuser dump (a trainer's inputs)
void register_chat_template(CLI::App& app);  // client/cmd_chat_template.cpp

}  // namespace kvb::cli
