#include "support/test_support.h"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace kvb::test {

std::string models_dir() {
  const char* env = std::getenv("KVBRIDGE_MODELS");
  if (env && *env) return env;
  return std::string(KVB_DEFAULT_SHARED) + "/models";
}

std::string reference_dir() { return models_dir() + "/../reference"; }

std::string model_path(const std::string& rel) { return models_dir() + "/" + rel; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  INFO("reading " << path);
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string temp_dir() {
  static std::string dir = [] {
    namespace fs = std::filesystem;
    fs::path p = fs::temp_directory_path() / ("kvb_test_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p.string();
  }();
  return dir;
}

}  // namespace kvb::test
