#include "rpc/logging.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <chrono>
#include <random>

namespace kvb::rpc {

namespace {

std::atomic<bool> g_json{false};

// log_event() marks its messages with this prefix: what follows is already `"msg":...,"k":v` JSON
// members. Plain spdlog calls from anywhere else get their message escaped into "msg".
constexpr char kJsonMarker = '\x1e';

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& m, spdlog::memory_buf_t& dest) override {
    std::string line = "{\"ts\":";
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(m.time.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    line += fmt::format("\"{:%Y-%m-%dT%H:%M:%S}.{:03d}Z\"", tm, static_cast<int>(ms % 1000));
    line += ",\"level\":";
    const auto lvl = spdlog::level::to_string_view(m.level);
    append_json_string(line, std::string_view(lvl.data(), lvl.size()));
    const std::string_view payload(m.payload.data(), m.payload.size());
    line += ',';
    if (!payload.empty() && payload.front() == kJsonMarker) {
      line += payload.substr(1);
    } else {
      line += "\"msg\":";
      append_json_string(line, payload);
    }
    line += "}\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

void append_value_json(std::string& out, const LogField& f) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          append_json_string(out, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          out += v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, double>) {
          out += fmt::format("{:.3f}", v);
        } else {
          out += fmt::format("{}", v);
        }
      },
      f.value);
}

// Like JSON, except that strings are quoted only when they need it (empty, blanks, quotes, '=').
void append_value_text(std::string& out, const LogField& f) {
  if (const auto* v = std::get_if<std::string_view>(&f.value)) {
    if (v->empty() || v->find_first_of(" \t\"=") != std::string_view::npos) {
      append_json_string(out, *v);
    } else {
      out += *v;
    }
    return;
  }
  append_value_json(out, f);
}

}  // namespace

void setup_logging(LogFormat format) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("kvbridge-agent", sink);
  if (format == LogFormat::kJson) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
    g_json = true;
  } else {
    logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
    g_json = false;
  }
  logger->set_level(spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

std::string new_request_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

void log_event(spdlog::level::level_enum level, std::string_view msg, std::initializer_list<LogField> fields) {
  log_event(level, msg, std::span<const LogField>(fields.begin(), fields.size()));
}

void log_event(spdlog::level::level_enum level, std::string_view msg, std::span<const LogField> fields) {
  std::string line;
  if (g_json.load(std::memory_order_relaxed)) {
    line += kJsonMarker;
    line += "\"msg\":";
    append_json_string(line, msg);
    for (const LogField& f : fields) {
      line += ',';
      append_json_string(line, f.key);
      line += ':';
      append_value_json(line, f);
    }
  } else {
    line += msg;
    for (const LogField& f : fields) {
      line += ' ';
      line += f.key;
      line += '=';
      append_value_text(line, f);
    }
  }
  spdlog::log(level, "{}", line);
}

}  // namespace kvb::rpc
