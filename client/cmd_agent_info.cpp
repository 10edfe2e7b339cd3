// kvbridge info --agent: an agent's model card and limits (GetInfo).
#include <cstdio>

#include "client/cli_remote.h"

namespace kvb::cli {

void print_agent_info(const std::string& addr, const RemoteFlags& remote) {
  auto info = connect_or_exit(addr, remote)->get_info();
  exit_on_error(info.status());
  const client::v1::AgentInfo& i = *info;
  const client::v1::ModelIdentity& m = i.model();
  const client::v1::Limits& l = i.limits();
  std::printf("agent        %s (%s) at %s\n", i.name().c_str(), i.version().c_str(), addr.c_str());
  std::printf("model        %s\n", i.model_path().c_str());
  std::printf("arch         %s, %u layers, n_embd %u, n_ff %u, vocab %u\n", m.arch().c_str(), m.n_layer(), m.n_embd(),
              m.n_ff(), m.n_vocab());
  std::printf("heads        %u query, %u kv, head_dim %u\n", m.n_head(), m.n_head_kv(), m.head_dim());
  std::printf("rope         %s, n_rot %u, theta %g, freq scale %g\n", m.rope_type().c_str(), m.rope_n_rot(),
              double(m.rope_theta()), double(m.rope_freq_scale()));
  std::printf("fingerprint  %016llx (tokenizer %016llx, weights %016llx)\n",
              static_cast<unsigned long long>(m.fingerprint()), static_cast<unsigned long long>(m.tokenizer_hash()),
              static_cast<unsigned long long>(m.weights_hash()));
  std::printf("tokenizer    %s, bos %d, eos %d\n", i.tokenizer().c_str(), i.bos_id(), i.eos_id());
  std::printf("backend      %s\n", i.backend().c_str());
  std::printf("limits       context %u tokens, %u new tokens, messages %s, request caches %s\n", l.max_context_tokens(),
              l.max_new_tokens(), human_bytes(l.max_message_bytes()).c_str(),
              human_bytes(l.max_request_cache_bytes()).c_str());
  std::printf("batching     %u sequences at once, %u tokens a step (up to %u prompt tokens beside generating ones, "
              "step <= %gx theirs), %u may wait\n",
              l.parallel(), l.max_batch_tokens(), l.prefill_chunk(), l.prefill_step_factor(), l.max_queue());
  if (l.prefix_cache_bytes() > 0) {
    std::printf("prefix cache %s in blocks of %u tokens\n", human_bytes(l.prefix_cache_bytes()).c_str(),
                l.prefix_block_tokens());
  } else {
    std::printf("prefix cache off\n");
  }
  std::printf("cache store  %s, default ttl %us\n", human_bytes(l.max_cache_store_bytes()).c_str(),
              l.default_cache_ttl_seconds());
  std::string wires;
  for (int d : i.wire_dtypes()) {
    if (!wires.empty()) wires += ", ";
    wires += client::v1::WireDType_Name(static_cast<client::v1::WireDType>(d));
  }
  std::printf("wire dtypes  %s\n", wires.c_str());
}

}  // namespace kvb::cli
