// Chat template families rendered natively (see chat_template.h for each format's layout).
#include "engine/chat_template.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>

namespace kvb {

namespace {

constexpr std::string_view kRoles[] = {"system", "user", "assistant", "tool"};
constexpr std::string_view kQwenDefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

struct FormatName {
  ChatFormat format;
  std::string_view name;
};
constexpr std::array<FormatName, 5> kFormats = {{{ChatFormat::kChatML, "chatml"},
                                                 {ChatFormat::kQwen25, "qwen2.5"},
                                                 {ChatFormat::kQwen3, "qwen3"},
                                                 {ChatFormat::kLlama3, "llama3"},
                                                 {ChatFormat::kLlama31, "llama3.1"}}};

bool contains(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

// Python's str.strip(chars) family, for the characters the templates strip.
std::string_view lstrip(std::string_view s, std::string_view chars) {
  const size_t b = s.find_first_not_of(chars);
  return b == std::string_view::npos ? std::string_view{} : s.substr(b);
}
std::string_view rstrip(std::string_view s, std::string_view chars) {
  const size_t e = s.find_last_not_of(chars);
  return e == std::string_view::npos ? std::string_view{} : s.substr(0, e + 1);
}
std::string_view strip(std::string_view s, std::string_view chars) { return lstrip(rstrip(s, chars), chars); }
// Jinja's `trim` (Python str.strip()): ASCII whitespace and the separators \x1c-\x1f. Unicode
// spaces beyond ASCII are kept (a documented difference; none of the families' special text has any).
constexpr std::string_view kWhitespace = " \t\n\r\v\f\x1c\x1d\x1e\x1f";
std::string_view trim(std::string_view s) { return strip(s, kWhitespace); }

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Text before the first / after the last occurrence of `sep` (Python split(sep)[0] / [-1]).
std::string_view before_first(std::string_view s, std::string_view sep) {
  const size_t i = s.find(sep);
  return i == std::string_view::npos ? s : s.substr(0, i);
}
std::string_view after_last(std::string_view s, std::string_view sep) {
  const size_t i = s.rfind(sep);
  return i == std::string_view::npos ? s : s.substr(i + sep.size());
}

bool is_tool_response(std::string_view content) {
  return starts_with(content, "<tool_response>") && ends_with(content, "</tool_response>");
}

// Tool results: consecutive "tool" messages form one user turn of <tool_response> blocks.
void render_qwen_tool(std::string& out, std::span<const ChatMessage> m, size_t i) {
  if (i == 0 || m[i - 1].role != "tool") out += "<|im_start|>user";
  out += "\n<tool_response>\n";
  out += m[i].content;
  out += "\n</tool_response>";
  if (i + 1 == m.size() || m[i + 1].role != "tool") out += "<|im_end|>\n";
}

void render_im(std::string& out, std::string_view role, std::string_view content) {
  out += fmt::format("<|im_start|>{}\n{}<|im_end|>\n", role, content);
}

std::string render_chatml(std::span<const ChatMessage> m, const ChatOptions& opt, const std::string& default_system) {
  std::string out;
  if (opt.default_system && !default_system.empty() && m[0].role != "system") {
    render_im(out, "system", default_system);
  }
  for (const ChatMessage& msg : m) render_im(out, msg.role, msg.content);
  if (opt.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_qwen25(std::span<const ChatMessage> m, const ChatOptions& opt) {
  std::string out;
  render_im(out, "system", m[0].role == "system" ? std::string_view(m[0].content) : kQwenDefaultSystem);
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i].role == "system" && i == 0) continue;  // already the header
    if (m[i].role == "tool") {
      render_qwen_tool(out, m, i);
    } else {
      render_im(out, m[i].role, m[i].content);
    }
  }
  if (opt.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_qwen3(std::span<const ChatMessage> m, const ChatOptions& opt) {
  std::string out;
  if (m[0].role == "system") render_im(out, "system", m[0].content);
  // The last real user query: assistant turns after it keep their reasoning.
  size_t last_query = m.size() - 1;
  for (size_t k = m.size(); k-- > 0;) {
    if (m[k].role == "user" && !is_tool_response(m[k].content)) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < m.size(); ++i) {
    const ChatMessage& msg = m[i];
    if (msg.role == "user" || (msg.role == "system" && i != 0)) {
      render_im(out, msg.role, msg.content);
    } else if (msg.role == "assistant") {
      std::string_view content = msg.content, reasoning;
      if (contains(content, "</think>")) {
        reasoning = lstrip(after_last(rstrip(before_first(content, "</think>"), "\n"), "<think>"), "\n");
        content = lstrip(after_last(content, "</think>"), "\n");
      }
      out += "<|im_start|>assistant\n";
      if (i > last_query && (i + 1 == m.size() || !reasoning.empty())) {
        out += fmt::format("<think>\n{}\n</think>\n\n{}", strip(reasoning, "\n"), lstrip(content, "\n"));
      } else {
        out += content;
      }
      out += "<|im_end|>\n";
    } else if (msg.role == "tool") {
      render_qwen_tool(out, m, i);
    }
  }
  if (opt.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (opt.enable_thinking == false) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

void render_header(std::string& out, std::string_view role, std::string_view body) {
  out += fmt::format("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", role, body);
}

std::string render_llama3(std::span<const ChatMessage> m, const ChatOptions& opt) {
  std::string out = "<|begin_of_text|>";
  for (const ChatMessage& msg : m) render_header(out, msg.role, trim(msg.content));
  if (opt.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_llama31(std::span<const ChatMessage> m, const ChatOptions& opt) {
  std::string out = "<|begin_of_text|>";
  const bool has_system = m[0].role == "system";
  render_header(out, "system",
                fmt::format("Cutting Knowledge Date: December 2023\nToday Date: {}\n\n{}", opt.date_string,
                            has_system ? trim(m[0].content) : std::string_view{}));
  for (size_t i = has_system ? 1 : 0; i < m.size(); ++i) {
    if (m[i].role == "tool") {
      // The template passes tool output through `tojson` (a string is iterable in Jinja), so it
      // arrives as a JSON string literal; Hugging Face's tojson keeps non-ASCII as is.
      render_header(out, "ipython", nlohmann::json(m[i].content).dump(-1, ' ', false));
    } else {
      render_header(out, m[i].role, trim(m[i].content));
    }
  }
  if (opt.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

std::string_view chat_format_name(ChatFormat f) {
  for (const FormatName& n : kFormats) {
    if (n.format == f) return n.name;
  }
  return "?";
}

Result<std::vector<ChatMessage>> parse_chat_messages(std::string_view json) {
  const nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("chat messages: not valid JSON");
  const nlohmann::json& arr = j.is_object() && j.contains("messages") ? j["messages"] : j;
  if (!arr.is_array()) return invalid_argument("chat messages: expected an array of {role, content} objects");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < arr.size(); ++i) {
    const nlohmann::json& m = arr[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      return invalid_argument(fmt::format("chat messages[{}]: expected an object with string role and content", i));
    }
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

// A ChatML template's default system message: the literal text of a '<|im_start|>system\n...<|im_end|>'
// string that the source emits under a test of messages[0]'s role against 'system' (SmolLM2's
// `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are ...' }}`).
// Empty when there is none or the text is not a plain literal (Jinja inside, quotes, escapes).
std::string chatml_default_system(std::string_view jinja) {
  size_t at = std::string_view::npos;
  for (std::string_view test : {"messages[0]['role'] != 'system'", "messages[0][\"role\"] != \"system\"",
                                "messages[0].role != 'system'", "messages[0].role != \"system\""}) {
    at = std::min(at, jinja.find(test));
  }
  if (at == std::string_view::npos) return {};
  constexpr std::string_view kOpen = "<|im_start|>system";
  const size_t open = jinja.find(kOpen, at);
  if (open == std::string_view::npos) return {};
  std::string_view rest = jinja.substr(open + kOpen.size());
  if (starts_with(rest, "\n")) {
    rest.remove_prefix(1);
  } else if (starts_with(rest, "\\n")) {
    rest.remove_prefix(2);
  } else {
    return {};
  }
  const size_t end = rest.find("<|im_end|>");
  if (end == std::string_view::npos) return {};
  const std::string_view text = rest.substr(0, end);
  for (std::string_view bad : {"{{", "{%", "'", "\"", "\\"}) {
    if (contains(text, bad)) return {};
  }
  return std::string(text);
}

Result<ChatTemplate> ChatTemplate::from_source(std::string_view jinja) {
  if (jinja.empty()) return not_found("the model has no chat template");
  if (contains(jinja, "<|im_start|>")) {
    if (contains(jinja, "<think>") || contains(jinja, "enable_thinking")) return ChatTemplate(ChatFormat::kQwen3);
    if (contains(jinja, kQwenDefaultSystem)) return ChatTemplate(ChatFormat::kQwen25);
    return ChatTemplate(ChatFormat::kChatML, chatml_default_system(jinja));
  }
  if (contains(jinja, "<|start_header_id|>")) {
    if (contains(jinja, "Cutting Knowledge Date")) return ChatTemplate(ChatFormat::kLlama31);
    return ChatTemplate(ChatFormat::kLlama3);
  }
  return unimplemented(fmt::format(
      "chat template of an unknown family ({} bytes; kvbridge renders ChatML/Qwen and Llama 3 templates; "
      "choose one by name)",
      jinja.size()));
}

Result<ChatTemplate> ChatTemplate::from_name(std::string_view name) {
  std::string names;
  for (const FormatName& n : kFormats) {
    if (n.name == name) return ChatTemplate(n.format);
    names += names.empty() ? "" : ", ";
    names += n.name;
  }
  return invalid_argument(fmt::format("unknown chat template '{}' (known: {})", name, names));
}

Result<std::string> ChatTemplate::render(std::span<const ChatMessage> messages, const ChatOptions& opt) const {
  if (messages.empty()) return invalid_argument("chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    bool known = false;
    for (std::string_view r : kRoles) known = known || role == r;
    if (!known) {
      return invalid_argument(
          fmt::format("chat: messages[{}] has role '{}' (expected system, user, assistant or tool)", i, role));
    }
    if (role == "tool" && format_ == ChatFormat::kLlama3) {
      return invalid_argument(fmt::format("chat: messages[{}]: the llama3 template has no tool role", i));
    }
  }
  switch (format_) {
    case ChatFormat::kChatML: return render_chatml(messages, opt, default_system_);
    case ChatFormat::kQwen25: return render_qwen25(messages, opt);
    case ChatFormat::kQwen3: return render_qwen3(messages, opt);
    case ChatFormat::kLlama3: return render_llama3(messages, opt);
    case ChatFormat::kLlama31: return render_llama31(messages, opt);
  }
  return internal_error("chat: unhandled format");
}

}  // namespace kvb
