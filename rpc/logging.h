// Logging: spdlog to stderr as text or as JSON lines, request ids, and the per-call log record.
//
// stdout is reserved for the "listening on HOST:PORT" line that scripts and tests read; every log
// line goes to stderr. With LogFormat::kJson each line is one JSON object:
//   {"ts":"2025-01-01T12:00:00.123Z","level":"info","msg":"...", <fields>}
// and with kText: `[ts] [level] msg key=value key=value`.
// Threading: setup_logging() once at startup before other threads log; log_event() and
// new_request_id() are thread-safe.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include <spdlog/spdlog.h>

#include "rpc/flags.h"

namespace kvb::rpc {

// Installs the default spdlog logger (stderr, colour off, the given format, level info).
void setup_logging(LogFormat format);

// A random 64-bit id as 16 hex characters, for correlating one call's log lines.
std::string new_request_id();

struct LogField {
  std::string_view key;
  std::variant<std::string_view, int64_t, double, bool> value;
};

// One log line with structured fields (top-level keys in JSON, key=value pairs in text).
void log_event(spdlog::level::level_enum level, std::string_view msg, std::initializer_list<LogField> fields);
void log_event(spdlog::level::level_enum level, std::string_view msg, std::span<const LogField> fields);

}  // namespace kvb::rpc
