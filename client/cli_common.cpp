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
