// Chat templates: a list of messages → the prompt text a chat model was trained on.
//
// Models ship their template as Jinja source (tokenizer_config.json "chat_template", GGUF
// tokenizer.chat_template). kvbridge does not run Jinja: it recognizes the template family from
// the source and renders that family's format natively, the way llama.cpp's built-in templates do.
// Each format reproduces the family's reference template byte for byte for messages with a string
// content (tests/python/test_chat_template.py renders the real Qwen3 template with jinja2 and
// compares); tool *definitions* (the `tools` argument) are not supported, tool *results*
// (role "tool") are.
//
//   kChatML   <|im_start|>{role}\n{content}<|im_end|>\n per message; when the template's source has a
//             default system message for conversations that do not start with one (SmolLM2: "You
//             are a helpful AI assistant named SmolLM, trained by Hugging Face"), it comes first
//   kQwen25   ChatML; a default system message ("You are Qwen, created by Alibaba Cloud. You are a
//             helpful assistant.") when the first message is not a system one; tool results
//             grouped into one user turn of <tool_response> blocks
//   kQwen3    Qwen2.5's layout without the default system message; assistant turns after the last
//             user query keep their <think> reasoning, earlier ones drop it; with enable_thinking
//             false the generation prompt carries an empty <think></think> block
//   kLlama3   <|begin_of_text|> then <|start_header_id|>{role}<|end_header_id|>\n\n{trimmed}<|eot_id|>
//   kLlama31  Llama 3.1/3.2: kLlama3 with a system turn always first, carrying "Cutting Knowledge
//             Date: December 2023" and "Today Date: {date}"; tool results use role "ipython"
//
// The rendered text contains special-token text (<|im_start|>, <|begin_of_text|>, ...): encode it
// with EncodeOptions{.add_bos = false, .parse_special = true} (the template writes the BOS itself
// where the family wants one), as Hugging Face's apply_chat_template does.
//
// Thread-safety: ChatTemplate is an immutable value.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"
#include "kernels/status.h"

namespace kvb {

struct ChatMessage {
  std::string role;     // "system" | "user" | "assistant" | "tool"
  std::string content;  // UTF-8
};

enum class ChatFormat { kChatML, kQwen25, kQwen3, kLlama3, kLlama31 };

// "chatml" | "qwen2.5" | "qwen3" | "llama3" | "llama3.1"
std::string_view chat_format_name(ChatFormat f);

struct ChatOptions {
  // End with the assistant header, so the model's next tokens are the reply.
  bool add_generation_prompt = true;
  // kQwen3 only: false adds the empty <think>\n\n</think>\n\n block after the generation prompt
  // (the template's enable_thinking=false); absent = the template's default (thinking on).
  std::optional<bool> enable_thinking;
  // kChatML with a default system message: false leaves it out, for messages that continue a
  // conversation whose start (and system turn) is already in a context cache.
  bool default_system = true;
  // kLlama31 only: the "Today Date" line, as the template's date_string ("26 Jul 2024" when absent).
  std::string date_string = "26 Jul 2024";
};

// How to encode rendered chat text: no BOS (the template writes it), special-token text parsed.
inline EncodeOptions chat_encode_options() {
  EncodeOptions eo;
  eo.add_bos = false;
  eo.parse_special = true;
  return eo;
}

// Messages from JSON: an array of {"role": ..., "content": ...} objects (other keys ignored), or an
// object with such an array under "messages". INVALID_ARGUMENT naming what is wrong.
Result<std::vector<ChatMessage>> parse_chat_messages(std::string_view json);

class ChatTemplate {
 public:
  // Recognizes a template's Jinja source by the family's markers. NOT_FOUND for an empty source
  // (the model has no template); UNIMPLEMENTED for a template of no known family.
  static Result<ChatTemplate> from_source(std::string_view jinja);
  // By name (chat_format_name), for models without a template or to override it.
  // INVALID_ARGUMENT listing the names for an unknown one.
  static Result<ChatTemplate> from_name(std::string_view name);

  ChatFormat format() const { return format_; }
  std::string_view name() const { return chat_format_name(format_); }
  // kChatML: the system message placed first when messages[0] is not a system one; empty if none.
  const std::string& default_system() const { return default_system_; }

  // INVALID_ARGUMENT for no messages, an empty or unknown role (naming the message index), or a
  // role the format cannot place (kLlama3 has no tool role).
  Result<std::string> render(std::span<const ChatMessage> messages, const ChatOptions& opt = {}) const;

 private:
  explicit ChatTemplate(ChatFormat f, std::string default_system = {})
      : format_(f), default_system_(std::move(default_system)) {}
  ChatFormat format_;
  std::string default_system_;
};

}  // namespace kvb
