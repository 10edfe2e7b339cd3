// kvbridge: the command-line client.
#include <cstdio>

#include "client/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kvbridge: multi-agent LLM inference with KV-cache passing"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvbridge 0.1.0");
  kvb::cli::register_generate(app);
  kvb::cli::register_tokenize(app);
  kvb::cli::register_info(app);
  kvb::cli::register_convert(app);
  kvb::cli::register_synth(app);
  kvb::cli::register_logits(app);
  kvb::cli::register_perplexity(app);
  kvb::cli::register_prefill(app);
  kvb::cli::register_pass(app);
  kvb::cli::register_caches(app);
  kvb::cli::register_cache(app);
  kvb::cli::register_fuse(app);
  kvb::cli::register_fuser(app);
  kvb::cli::register_chat_template(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kvb::cli::CliExit& e) {
    return e.code;
  }
  return 0;
}
