#include "agent/request_convert.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "agent/agent_config.h"
#include "engine/chat_template.h"
#include "proto/wire_convert.h"

namespace kvb::agent {

namespace {

constexpr uint32_t kMaxTtlS = 365u * 24 * 3600;

Result<std::vector<ContextRef>> convert_context(const google::protobuf::RepeatedPtrField<pb::CacheRef>& refs,
                                                const RequestLimits& lim) {
  if (static_cast<size_t>(refs.size()) > kMaxContextRefs) {
    return invalid_argument(fmt::format("context: {} cache refs, at most {}", refs.size(), kMaxContextRefs));
  }
  std::vector<ContextRef> out;
  out.reserve(static_cast<size_t>(refs.size()));
  for (int i = 0; i < refs.size(); ++i) {
    const pb::CacheRef& r = refs.Get(i);
    const std::string field = fmt::format("context[{}]", i);
    KVB_RETURN_IF_ERROR(runtime::check_cache_id(r.cache_id(), field + ".cache_id"));
    ContextRef c;
    c.cache_id = r.cache_id();
    if (!r.agent().empty() && !(lim.is_self && lim.is_self(r.agent()))) {
      auto hp = rpc::parse_host_port(r.agent(), /*allow_port_zero=*/false);
      if (!hp.ok()) return invalid_argument(field + ".agent: " + hp.status().message());
      c.agent = r.agent();
    }
    out.push_back(std::move(c));
  }
  return out;
}

Result<PullOptions> convert_pull(const pb::PullOptions& p) {
  PullOptions out;
  auto dtype = wire::wire_dtype_from_proto(p.dtype());
  if (!dtype.ok()) return invalid_argument("pull.dtype: " + dtype.status().message());
  auto comp = wire::compression_from_proto(p.compression());
  if (!comp.ok()) return invalid_argument("pull.compression: " + comp.status().message());
  out.dtype = *dtype;
  out.compression = *comp;
  if (!p.transport().empty()) {
    auto choice = transport::parse_transport(p.transport());
    if (!choice.ok()) return invalid_argument("pull.transport: " + choice.status().message());
    out.transport = *choice;
  }
  return out;
}

Result<std::optional<FuserSpec>> convert_fuser(bool has, const pb::FuserRef& f) {
  if (!has) return std::optional<FuserSpec>();
  FuserSpec out;
  switch (f.where_case()) {
    case pb::FuserRef::kAddress: {
      auto hp = rpc::parse_host_port(f.address(), /*allow_port_zero=*/false);
      if (!hp.ok()) return invalid_argument("fuser.address: " + hp.status().message());
      out.address = f.address();
      break;
    }
    case pb::FuserRef::kEmbedded:
      if (!f.embedded()) return invalid_argument("fuser.embedded must be true when set");
      out.embedded = true;
      break;
    default: return invalid_argument("fuser: set address or embedded");
  }
  auto dtype = wire::wire_dtype_from_proto(f.dtype());
  if (!dtype.ok()) return invalid_argument("fuser.dtype: " + dtype.status().message());
  out.dtype = *dtype;
  return std::optional<FuserSpec>(std::move(out));
}

// Chat input → the prompt text, with the model's template or the one the request names.
// has_context: the messages continue a conversation held in context caches, so the template's
// default system message (which opens a conversation) is left out.
Result<std::string> render_chat(const pb::ChatInput& c, const Tokenizer& tok, bool has_context) {
  if (c.messages_size() == 0) return invalid_argument("chat.messages is empty");
  if (c.messages_size() > int(kMaxChatMessages)) {
    return invalid_argument(fmt::format("chat has {} messages (at most {})", c.messages_size(), kMaxChatMessages));
  }
  Result<ChatTemplate> tmpl = c.template_name().empty() ? ChatTemplate::from_source(tok.vocab().chat_template)
                                                        : ChatTemplate::from_name(c.template_name());
  if (!tmpl.ok()) {
    if (!c.template_name().empty()) return invalid_argument("chat.template_name: " + tmpl.status().message());
    return failed_precondition(fmt::format("this agent's model cannot render chat input ({}); name a template in "
                                           "chat.template_name",
                                           tmpl.status().message()));
  }
  std::vector<ChatMessage> messages;
  messages.reserve(size_t(c.messages_size()));
  for (const pb::ChatMessage& m : c.messages()) messages.push_back({m.role(), m.content()});
  ChatOptions opt;
  opt.add_generation_prompt = !c.no_generation_prompt();
  opt.default_system = !has_context;
  if (c.has_enable_thinking()) opt.enable_thinking = c.enable_thinking();
  return tmpl->render(messages, opt);
}

// The input (text, chat or token ids) → validated ids. `text` / `tokens` per the oneof.
template <class Req>
Result<std::vector<int32_t>> convert_input(const Req& r, bool has_context, const RequestLimits& lim) {
  const int32_t n_vocab = lim.tokenizer->n_vocab();
  std::vector<int32_t> ids;
  if (r.has_tokens()) {
    const auto& src = r.tokens().ids();
    if (src.size() > lim.ctx_size) {
      return resource_exhausted(
          fmt::format("input of {} tokens exceeds the context size of {} tokens", src.size(), lim.ctx_size));
    }
    ids.reserve(static_cast<size_t>(src.size()));
    for (int i = 0; i < src.size(); ++i) {
      const int32_t id = src.Get(i);
      if (id < 0 || id >= n_vocab) {
        return invalid_argument(fmt::format("tokens.ids[{}] = {} is outside the vocabulary [0, {})", i, id, n_vocab));
      }
      ids.push_back(id);
    }
  } else if (r.has_text() || r.has_chat()) {
    std::string chat_text;
    if (r.has_chat()) {
      KVB_ASSIGN_OR_RETURN(chat_text, render_chat(r.chat(), *lim.tokenizer, has_context));
    }
    const std::string& text = r.has_chat() ? chat_text : r.text();
    // Text of more than 64 bytes per context cell cannot fit (no piece is that long): refuse it
    // before tokenizing.
    if (text.size() > size_t(lim.ctx_size) * 64 + 4096) {
      return resource_exhausted(fmt::format("input text of {} bytes cannot fit the context size of {} tokens",
                                            text.size(), lim.ctx_size));
    }
    EncodeOptions eo;
    eo.add_bos = r.has_add_bos() ? r.add_bos() : !has_context;
    eo.add_space_prefix = !has_context;  // text after context caches continues them (agent.proto)
    ids = lim.tokenizer->encode(text, r.has_chat() ? chat_encode_options() : eo);
    if (ids.size() > size_t(lim.ctx_size)) {
      return resource_exhausted(
          fmt::format("input text is {} tokens, more than the context size of {} tokens", ids.size(), lim.ctx_size));
    }
  }
  if (ids.empty() && !has_context) {
    return invalid_argument("empty input: give text or tokens (or context caches to continue from)");
  }
  return ids;
}

Result<SamplingParams> convert_sampling(const pb::SamplingParams& p) {
  SamplingParams s;
  if (!std::isfinite(p.temperature()) || p.temperature() < 0 || p.temperature() > 100) {
    return invalid_argument(fmt::format("sampling.temperature must be in [0, 100], got {}", p.temperature()));
  }
  if (p.top_k() < 0) return invalid_argument(fmt::format("sampling.top_k must be >= 0, got {}", p.top_k()));
  if (!std::isfinite(p.top_p()) || p.top_p() < 0 || p.top_p() > 1) {
    return invalid_argument(fmt::format("sampling.top_p must be in [0, 1] (0 = off), got {}", p.top_p()));
  }
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  s.seed = p.seed();
  const Status st = s.validate();
  if (!st.ok()) return invalid_argument("sampling: " + st.message());
  return s;
}

// GenerateRequest.forced / logprobs / top_logprobs → the options (agent.proto's limits).
Status convert_scoring(const pb::GenerateRequest& r, const RequestLimits& lim, runtime::GenerateOptions& o) {
  const int32_t n_vocab = lim.tokenizer->n_vocab();
  if (r.forced().ids_size() > lim.max_new_tokens) {
    return invalid_argument(fmt::format("forced: {} tokens, at most --max-new-tokens {}", r.forced().ids_size(),
                                        lim.max_new_tokens));
  }
  for (int i = 0; i < r.forced().ids_size(); ++i) {
    const int32_t id = r.forced().ids(i);
    if (id < 0 || id >= n_vocab) {
      return invalid_argument(fmt::format("forced.ids[{}] = {} is outside the vocabulary [0, {})", i, id, n_vocab));
    }
    o.forced.push_back(id);
  }
  if (r.top_logprobs() > kMaxTopLogprobs) {
    return invalid_argument(fmt::format("top_logprobs must be <= {}", kMaxTopLogprobs));
  }
  o.logprobs = r.logprobs();
  o.top_logprobs = int32_t(r.top_logprobs());
  if (!o.forced.empty()) o.max_tokens = int32_t(o.forced.size());
  return Status::Ok();
}

Status check_ttl(uint32_t ttl_s) {
  if (ttl_s > kMaxTtlS) return invalid_argument(fmt::format("cache_ttl_seconds must be <= {}", kMaxTtlS));
  return Status::Ok();
}

}  // namespace

bool SessionSpec::has_remote_context() const {
  for (const auto& c : context) {
    if (!c.is_local()) return true;
  }
  return false;
}

Result<GenerateSpec> convert_generate(const pb::GenerateRequest& r, const RequestLimits& lim) {
  GenerateSpec g;
  KVB_ASSIGN_OR_RETURN(g.session.context, convert_context(r.context(), lim));
  KVB_ASSIGN_OR_RETURN(g.session.pull, convert_pull(r.pull()));
  KVB_ASSIGN_OR_RETURN(g.session.fuser, convert_fuser(r.has_fuser(), r.fuser()));
  KVB_ASSIGN_OR_RETURN(g.session.tokens, convert_input(r, !g.session.context.empty(), lim));
  KVB_ASSIGN_OR_RETURN(g.options.sampling, convert_sampling(r.sampling()));
  const int64_t asked = r.max_tokens() == 0 ? kDefaultMaxTokens : int64_t(r.max_tokens());
  g.options.max_tokens = int32_t(std::min<int64_t>(asked, lim.max_new_tokens));  // capped (agent.proto)
  if (static_cast<size_t>(r.stop_size()) > kMaxStopStrings) {
    return invalid_argument(fmt::format("stop: {} strings, at most {}", r.stop_size(), kMaxStopStrings));
  }
  for (int i = 0; i < r.stop_size(); ++i) {
    const std::string& s = r.stop(i);
    if (s.empty() || s.size() > kMaxStopBytes) {
      return invalid_argument(fmt::format("stop[{}] must be 1..{} bytes", i, kMaxStopBytes));
    }
    g.options.stop.push_back(s);
  }
  g.options.ignore_eos = r.ignore_eos();
  g.options.keep_cache = r.keep_cache();
  KVB_RETURN_IF_ERROR(check_ttl(r.cache_ttl_seconds()));
  g.options.cache_ttl_s = r.cache_ttl_seconds();
  KVB_RETURN_IF_ERROR(convert_scoring(r, lim, g.options));
  if (g.session.context.size() == 1) {
    g.session.pull.reserve_cells = int32_t(std::min<int64_t>(
        int64_t(g.session.tokens.size()) + g.options.max_tokens, lim.ctx_size));
  }
  return g;
}

Result<PrefillSpec> convert_prefill(const pb::PrefillRequest& r, const RequestLimits& lim) {
  PrefillSpec p;
  KVB_ASSIGN_OR_RETURN(p.session.context, convert_context(r.context(), lim));
  KVB_ASSIGN_OR_RETURN(p.session.pull, convert_pull(r.pull()));
  KVB_ASSIGN_OR_RETURN(p.session.fuser, convert_fuser(r.has_fuser(), r.fuser()));
  KVB_ASSIGN_OR_RETURN(p.session.tokens, convert_input(r, !p.session.context.empty(), lim));
  KVB_RETURN_IF_ERROR(check_ttl(r.cache_ttl_seconds()));
  p.options.ttl_s = r.cache_ttl_seconds();
  p.options.pin = r.pin();
  if (p.session.context.size() == 1) p.session.pull.reserve_cells = int32_t(p.session.tokens.size());
  return p;
}

void to_proto(const runtime::CacheInfo& c, pb::CacheInfo* out) {
  out->set_cache_id(c.id);
  out->set_n_tokens(static_cast<uint32_t>(c.n_tokens));
  out->set_bytes(c.bytes);
  out->set_pinned(c.pinned);
  out->set_created_unix_ms(c.created_ms);
  out->set_last_used_unix_ms(c.last_used_ms);
  out->set_expires_unix_ms(c.expires_ms);
  out->set_fingerprint(c.fingerprint);
}

void to_proto(const runtime::CacheStoreStats& s, pb::StoreStats* out) {
  out->set_bytes_used(s.bytes_used);
  out->set_bytes_budget(s.bytes_budget);
  out->set_n_caches(s.n_caches);
  out->set_hits(s.hits);
  out->set_misses(s.misses);
  out->set_evictions(s.evictions);
  out->set_expirations(s.expirations);
}

pb::StopReason to_proto(runtime::FinishReason r) {
  switch (r) {
    case runtime::FinishReason::kEos: return pb::STOP_REASON_EOS;
    case runtime::FinishReason::kMaxTokens: return pb::STOP_REASON_MAX_TOKENS;
    case runtime::FinishReason::kStopString: return pb::STOP_REASON_STOP_STRING;
    case runtime::FinishReason::kContextFull: return pb::STOP_REASON_CONTEXT_FULL;
  }
  return pb::STOP_REASON_UNSPECIFIED;
}

void to_proto(const FuseReport& r, pb::FuseStats* out) {
  out->set_fused_tokens(r.fused_tokens);
  out->set_slices_fused(r.slices_fused);
  out->set_sharer_bytes(r.sharer_bytes);
  out->set_fuser_bytes_sent(r.fuser_bytes_sent);
  out->set_fuser_bytes_received(r.fuser_bytes_received);
  out->set_fuse_ms(r.fuse_ms);
  out->set_aligned(r.aligned);
  out->set_slices_fused_early(r.slices_fused_early);
}

pb::ContextTransport to_proto(const ContextRef& ref, const PullTransport& how) {
  pb::ContextTransport t;
  t.set_agent(ref.agent);
  t.set_cache_id(ref.cache_id);
  t.set_requested(std::string(transport::transport_name(how.requested)));
  t.set_used(std::string(transport::transport_name(how.selection.kind)));
  t.set_reason(how.selection.reason);
  return t;
}

}  // namespace kvb::agent
