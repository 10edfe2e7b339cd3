// Chat template recognition, messages JSON and errors. Renderings are compared with Jinja in
// tests/python/test_chat_template.py; here: what the C++ API promises beyond the text.
#include <catch2/catch.hpp>

#include "engine/chat_template.h"

namespace kvb {
namespace {

TEST_CASE("chat templates are recognized from their Jinja source", "[chat]") {
  const std::pair<const char*, ChatFormat> cases[] = {
      {"{{ '<|im_start|>' + m.role }}", ChatFormat::kChatML},
      {"<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.", ChatFormat::kQwen25},
      {"<|im_start|> {% if enable_thinking is false %}<think>{% endif %}", ChatFormat::kQwen3},
      {"'<|start_header_id|>' + message['role']", ChatFormat::kLlama3},
      {"<|start_header_id|> Cutting Knowledge Date: December 2023", ChatFormat::kLlama31},
  };
  for (const auto& [src, want] : cases) {
    auto t = ChatTemplate::from_source(src);
    REQUIRE(t.ok());
    CHECK(t->format() == want);
    auto by_name = ChatTemplate::from_name(t->name());
    REQUIRE(by_name.ok());
    CHECK(by_name->format() == want);
  }
  CHECK(ChatTemplate::from_source("").status().code() == StatusCode::kNotFound);
  CHECK(ChatTemplate::from_source("[INST] {{ m }} [/INST]").status().code() == StatusCode::kUnimplemented);
  auto bad = ChatTemplate::from_name("vicuna");
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(bad.status().message(), Catch::Contains("qwen3") && Catch::Contains("llama3.1"));
}

TEST_CASE("chat rendering refuses what the format cannot place", "[chat]") {
  const ChatTemplate chatml = *ChatTemplate::from_name("chatml");
  CHECK(chatml.render({}).status().code() == StatusCode::kInvalidArgument);
  const std::vector<ChatMessage> bad_role = {{"user", "hi"}, {"narrator", "x"}};
  auto r = chatml.render(bad_role);
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Catch::Contains("messages[1]") && Catch::Contains("narrator"));
  const std::vector<ChatMessage> tool = {{"user", "hi"}, {"tool", "{}"}};
  CHECK(ChatTemplate::from_name("llama3")->render(tool).status().code() == StatusCode::kInvalidArgument);
  CHECK(ChatTemplate::from_name("llama3.1")->render(tool).ok());
}

TEST_CASE("generation prompt and thinking switches change only the tail", "[chat]") {
  const std::vector<ChatMessage> m = {{"user", "hi"}};
  const ChatTemplate qwen3 = *ChatTemplate::from_name("qwen3");
  ChatOptions no_gen;
  no_gen.add_generation_prompt = false;
  ChatOptions no_think;
  no_think.enable_thinking = false;
  const std::string base = *qwen3.render(m, no_gen);
  CHECK(base == "<|im_start|>user\nhi<|im_end|>\n");
  CHECK(*qwen3.render(m) == base + "<|im_start|>assistant\n");
  CHECK(*qwen3.render(m, no_think) == base + "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // enable_thinking only concerns Qwen3.
  const ChatTemplate chatml = *ChatTemplate::from_name("chatml");
  CHECK(*chatml.render(m, no_think) == *chatml.render(m));
}

TEST_CASE("chat messages parse from JSON", "[chat]") {
  auto m = parse_chat_messages(R"([{"role":"system","content":"s"},{"role":"user","content":"ü","name":"x"}])");
  REQUIRE(m.ok());
  REQUIRE(m->size() == 2);
  CHECK((*m)[1].role == "user");
  CHECK((*m)[1].content == "ü");
  auto wrapped = parse_chat_messages(R"({"messages":[{"role":"user","content":"a"}]})");
  REQUIRE(wrapped.ok());
  CHECK(wrapped->size() == 1);
  for (const char* bad : {"", "{", "[1]", R"([{"role":"user"}])", R"([{"role":3,"content":"a"}])", R"({"x":[]})"}) {
    INFO(bad);
    CHECK(parse_chat_messages(bad).status().code() == StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace kvb
