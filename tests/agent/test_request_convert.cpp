// Request conversion: chat input rendered with the model's template, scoring fields, and their errors.
#include <catch2/catch.hpp>

#include "agent/request_convert.h"
#include "engine/chat_template.h"
#include "engine/synth.h"

namespace kvb::agent {
namespace {

std::unique_ptr<Tokenizer> tokenizer_with_template(std::string chat_template) {
  Vocab v = synth_vocab(1024);
  v.chat_template = std::move(chat_template);
  auto t = Tokenizer::create(std::move(v));
  REQUIRE(t.ok());
  return std::move(*t);
}

RequestLimits limits(const Tokenizer& tok) {
  RequestLimits lim;
  lim.tokenizer = &tok;
  lim.ctx_size = 512;
  lim.max_new_tokens = 64;
  lim.is_self = [](std::string_view) { return false; };
  return lim;
}

pb::GenerateRequest chat_request(std::initializer_list<std::pair<const char*, const char*>> messages) {
  pb::GenerateRequest r;
  for (const auto& [role, content] : messages) {
    pb::ChatMessage* m = r.mutable_chat()->add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  return r;
}

TEST_CASE("chat input is rendered with the model's template and tokenized", "[server][chat]") {
  const auto tok = tokenizer_with_template("{{ '<|im_start|>' + message.role }} <think>");
  pb::GenerateRequest r = chat_request({{"system", "be brief"}, {"user", "Once upon a time"}});
  r.mutable_chat()->set_enable_thinking(false);
  auto g = convert_generate(r, limits(*tok));
  REQUIRE(g.ok());
  const std::vector<ChatMessage> m = {{"system", "be brief"}, {"user", "Once upon a time"}};
  ChatOptions opt;
  opt.enable_thinking = false;
  const std::string text = *ChatTemplate::from_name("qwen3")->render(m, opt);
  CHECK(g->session.tokens == tok->encode(text, chat_encode_options()));
  CHECK(g->session.tokens.front() != tok->bos());  // the template decides about BOS

  // A named template overrides the model's; no_generation_prompt drops the assistant header.
  r.mutable_chat()->set_template_name("llama3");
  r.mutable_chat()->set_no_generation_prompt(true);
  g = convert_generate(r, limits(*tok));
  REQUIRE(g.ok());
  opt.add_generation_prompt = false;
  CHECK(g->session.tokens == tok->encode(*ChatTemplate::from_name("llama3")->render(m, opt), chat_encode_options()));
}

TEST_CASE("chat input errors carry the right codes", "[server][chat]") {
  const auto none = tokenizer_with_template("");
  auto g = convert_generate(chat_request({{"user", "hi"}}), limits(*none));
  CHECK(g.status().code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(g.status().message(), Catch::Contains("template_name"));

  const auto chatml = tokenizer_with_template("<|im_start|>");
  pb::GenerateRequest bad_name = chat_request({{"user", "hi"}});
  bad_name.mutable_chat()->set_template_name("alpaca");
  CHECK(convert_generate(bad_name, limits(*chatml)).status().code() == StatusCode::kInvalidArgument);
  pb::GenerateRequest empty;
  empty.mutable_chat();
  CHECK(convert_generate(empty, limits(*chatml)).status().code() == StatusCode::kInvalidArgument);
  CHECK(convert_generate(chat_request({{"robot", "x"}}), limits(*chatml)).status().code() ==
        StatusCode::kInvalidArgument);
  const std::string huge(512 * 64 + 5000, 'a');
  CHECK(convert_generate(chat_request({{"user", huge.c_str()}}), limits(*chatml)).status().code() ==
        StatusCode::kResourceExhausted);

  pb::PrefillRequest p;
  pb::ChatMessage* m = p.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Once");
  auto pre = convert_prefill(p, limits(*chatml));
  REQUIRE(pre.ok());
  CHECK(pre->session.tokens == chatml->encode("<|im_start|>user\nOnce<|im_end|>\n<|im_start|>assistant\n",
                                              chat_encode_options()));
}

TEST_CASE("pull.transport: empty is auto, the four names parse, anything else is INVALID_ARGUMENT", "[server][pull]") {
  const auto tok = tokenizer_with_template("");
  using transport::TransportChoice;
  for (const auto& [name, want] : {std::pair<const char*, TransportChoice>{"", TransportChoice::kAuto},
                                   {"auto", TransportChoice::kAuto},
                                   {"grpc", TransportChoice::kGrpc},
                                   {"nccl", TransportChoice::kNccl},
                                   {"cuda-ipc", TransportChoice::kCudaIpc}}) {
    INFO("transport '" << name << "'");
    pb::GenerateRequest g;
    g.set_text("Once");
    g.mutable_pull()->set_transport(name);
    auto spec = convert_generate(g, limits(*tok));
    REQUIRE(spec.ok());
    CHECK(spec->session.pull.transport == want);
    pb::PrefillRequest p;
    p.set_text("Once");
    p.mutable_pull()->set_transport(name);
    auto pre = convert_prefill(p, limits(*tok));
    REQUIRE(pre.ok());
    CHECK(pre->session.pull.transport == want);
  }
  for (const char* bad : {"NCCL", "rdma", "grpc "}) {
    pb::GenerateRequest g;
    g.set_text("Once");
    g.mutable_pull()->set_transport(bad);
    const Status st = convert_generate(g, limits(*tok)).status();
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Catch::Contains("pull.transport") && Catch::Contains("cuda-ipc"));
  }
}

TEST_CASE("scoring fields: forced tokens set the length, bad ids and too many are INVALID_ARGUMENT", "[server]") {
  const auto tok = tokenizer_with_template("");
  pb::GenerateRequest r;
  r.set_text("Once upon a time");
  r.set_max_tokens(5);
  for (int32_t id : {7, 2, 1023}) r.mutable_forced()->add_ids(id);
  r.set_top_logprobs(4);
  auto g = convert_generate(r, limits(*tok));
  REQUIRE(g.ok());
  CHECK(g->options.forced == std::vector<int32_t>{7, 2, 1023});
  CHECK(g->options.max_tokens == 3);
  CHECK(g->options.top_logprobs == 4);
  CHECK_FALSE(g->options.logprobs);

  pb::GenerateRequest bad = r;
  bad.mutable_forced()->set_ids(1, 1024);  // the vocab has 1024 ids
  CHECK(convert_generate(bad, limits(*tok)).status().code() == StatusCode::kInvalidArgument);
  bad = r;
  bad.mutable_forced()->set_ids(0, -1);
  CHECK(convert_generate(bad, limits(*tok)).status().code() == StatusCode::kInvalidArgument);
  bad = r;
  bad.set_top_logprobs(kMaxTopLogprobs + 1);
  CHECK(convert_generate(bad, limits(*tok)).status().code() == StatusCode::kInvalidArgument);
  bad = r;
  bad.clear_forced();
  for (int i = 0; i < 65; ++i) bad.mutable_forced()->add_ids(3);  // --max-new-tokens is 64 here
  CHECK(convert_generate(bad, limits(*tok)).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvb::agent
