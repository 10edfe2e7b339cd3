// Shared helpers for kvbridge tests: where the models and reference vectors are.
#pragma once

#include <string>

namespace kvb::test {

// $KVBRIDGE_MODELS, else <checkout>/../shared/models.
std::string models_dir();
// <models_dir>/../reference (the reference vectors sit beside the models).
std::string reference_dir();
// models_dir() + "/" + rel.
std::string model_path(const std::string& rel);
// Whole file as bytes; fails the current test (Catch2 REQUIRE) if unreadable.
std::string read_file(const std::string& path);
// A fresh, empty temporary directory for this test process.
std::string temp_dir();

}  // namespace kvb::test
