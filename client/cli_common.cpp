#include <cstdio>

#include "client/commands.h"

namespace kvb::cli {

void exit_on_error(const Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "kvbridge: %s\n", s.to_string().c_str());
  throw CliExit{1};
}

}  // namespace kvb::cli
