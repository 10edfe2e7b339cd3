// kvbridge fuser info|synth: a fuser's summary (from a kvbridge-fuser over gRPC, or a fuser
// directory loaded here), and synthetic fuser directories bound to real models or bare shapes.
#include <fmt/format.h>

#include <charconv>
#include <cstdio>
#include <filesystem>

#include "client/cli_remote.h"
#include "client/fuser_client.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/fuser.h"
#include "fuser/synth_fuser.h"
#include "kernels/registry.h"
#include "proto/fuser_convert.h"

namespace kvb::cli {

namespace {

namespace v1 = client::v1;

// "0-3,5,7-9" for a sorted layer list; "-" when empty.
std::string ranges(const google::protobuf::RepeatedField<uint32_t>& xs) {
  if (xs.empty()) return "-";
  std::string s;
  for (int i = 0; i < xs.size();) {
    int j = i;
    while (j + 1 < xs.size() && xs[j + 1] == xs[j] + 1) ++j;
    s += fmt::format("{}{}", s.empty() ? "" : ",", xs[i]);
    if (j > i) s += fmt::format("-{}", xs[j]);
    i = j + 1;
  }
  return s;
}

std::string side_line(const v1::FuserModelSide& s) {
  const std::string fp = s.fingerprint() == 0 ? "unbound (shapes only)" : fmt::format("{:016x}", s.fingerprint());
  return fmt::format("{}: {} layers, {} kv heads x {}, fingerprint {}", s.name(), s.n_layer(), s.n_head_kv(),
                     s.head_dim(), fp);
}

// The same summary for a remote fuser and a local directory.
void print_fuser_info(const v1::FuserInfo& i, const std::string& where) {
  std::printf("fuser        %s (%s) at %s\n", i.name().c_str(), i.version().c_str(), where.c_str());
  std::printf("sharer       %s\n", side_line(i.sharer()).c_str());
  std::printf("receiver     %s\n", side_line(i.receiver()).c_str());
  std::printf("projector    %s, hidden %u, intermediate %u, %u blocks\n", i.projector().c_str(), i.hidden_dim(),
              i.intermediate_dim(), i.num_layers());
  std::printf("alignment    %s\n", i.alignment() ? fmt::format("on ({})", i.alignment_strategy()).c_str() : "off");
  std::printf("backend      %s\n", i.backend().c_str());
  std::printf("weights      %s\n", human_bytes(i.weight_bytes()).c_str());
  std::printf("slices       sharer K [%s] V [%s]; receiver K [%s] V [%s]\n", ranges(i.sharer_layers().k()).c_str(),
              ranges(i.sharer_layers().v()).c_str(), ranges(i.receiver_layers().k()).c_str(),
              ranges(i.receiver_layers().v()).c_str());
  std::printf("layer map    receiver <- sharer   K gate  V gate\n");
  for (const v1::FuserLayer& l : i.layers()) {
    std::printf("             %8u <- %-6u   %-6s  %-6s\n", l.receiver_layer(), l.sharer_layer(), l.k_gate() ? "on" : "off",
                l.v_gate() ? "on" : "off");
  }
}

void info_local(const std::string& dir) {
  auto backend = cpu_device().create_backend();
  exit_on_error(backend.status());
  auto f = fuser::Fuser::load(dir, **backend);
  exit_on_error(f.status().with_context(dir));
  v1::FuserInfo info;
  fuser::fuser_info(**f, std::filesystem::path(dir).filename().string(), (*backend)->device().description(), &info);
  print_fuser_info(info, dir);
}

// "L,H,D" → a shape-only side (fingerprint 0).
fuser::ModelSide parse_shape(const std::string& flag, const std::string& s) {
  int32_t v[3] = {0, 0, 0};
  const char* p = s.data();
  const char* end = s.data() + s.size();
  for (int i = 0; i < 3; ++i) {
    const auto [next, ec] = std::from_chars(p, end, v[i]);
    const bool sep_ok = i < 2 ? (next < end && *next == ',') : next == end;
    if (ec != std::errc() || v[i] <= 0 || !sep_ok) {
      throw CLI::ValidationError(flag, "expected LAYERS,KV_HEADS,HEAD_DIM (e.g. 28,8,128), got '" + s + "'");
    }
    p = next + 1;
  }
  fuser::ModelSide side;
  side.name = fmt::format("shape {}x{}x{}", v[0], v[1], v[2]);
  side.n_layer = v[0];
  side.n_head_kv = v[1];
  side.head_dim = v[2];
  return side;
}

// A side bound to a model file: its KV shape and fingerprint (model_identity hashes the weights).
struct BoundSide {
  fuser::ModelSide side;
  uint64_t tokenizer_hash = 0;
};
BoundSide load_side(const std::string& path, const std::string& tokenizer) {
  auto m = load_model(path, LoadOptions{tokenizer});
  exit_on_error(m.status());
  const ModelIdentity id = model_identity(**m);
  BoundSide b;
  b.side = fuser::model_side(std::filesystem::path(path).stem().string(), id);
  b.tokenizer_hash = id.tokenizer_hash;
  return b;
}

struct SynthArgs {
  std::string out, sharer, receiver, tok_sharer, tok_receiver, sharer_shape, receiver_shape;
  int32_t hidden = 64, intermediate = 64, blocks = 3;
  std::string gates = "alternate", dtype = "f32";
  uint64_t seed = 1;
};

void run_synth(const SynthArgs& a) {
  fuser::FuserConfig cfg;
  BoundSide s, r;
  s = a.sharer.empty() ? BoundSide{parse_shape("--sharer-shape", a.sharer_shape)} : load_side(a.sharer, a.tok_sharer);
  r = a.receiver.empty() ? BoundSide{parse_shape("--receiver-shape", a.receiver_shape)}
                         : load_side(a.receiver, a.tok_receiver);
  cfg.sharer = s.side;
  cfg.receiver = r.side;
  cfg.hidden_dim = a.hidden;
  cfg.intermediate_dim = a.intermediate;
  cfg.num_layers = a.blocks;
  cfg.dtype = a.dtype == "bf16" ? DType::kBF16 : DType::kF32;
  // Token alignment only when both vocabularies are known and differ (C2C: same vocab → off).
  cfg.align_enabled = s.tokenizer_hash != 0 && r.tokenizer_hash != 0 && s.tokenizer_hash != r.tokenizer_hash;
  const fuser::GatePattern gates = a.gates == "on"    ? fuser::GatePattern::kAllOn
                                   : a.gates == "off" ? fuser::GatePattern::kAllOff
                                                      : fuser::GatePattern::kAlternate;
  exit_on_error(fuser::write_synthetic_fuser(a.out, cfg, a.seed, gates));
  std::printf("wrote %s: %s -> %s, hidden %d, intermediate %d, %d blocks, gates %s, %s, alignment %s\n",
              a.out.c_str(), cfg.sharer.name.c_str(), cfg.receiver.name.c_str(), cfg.hidden_dim, cfg.intermediate_dim,
              cfg.num_layers, a.gates.c_str(), a.dtype.c_str(), cfg.align_enabled ? "on" : "off");
}

}  // namespace

void register_fuser(CLI::App& app) {
  CLI::App* f = app.add_subcommand("fuser", "Inspect kvbridge fusers, write synthetic ones, dump a trainer's inputs");
  f->require_subcommand(1);

  struct InfoArgs {
    std::string target;
    RemoteFlags remote;
  };
  auto ia = std::make_shared<InfoArgs>();
  CLI::App* info = f->add_subcommand("info", "A fuser's pair, dims, layer map, gates and slices");
  info->add_option("target", ia->target, "kvbridge-fuser address (host:port) or a fuser directory")->required();
  add_remote_flags(info, ia->remote);
  info->callback([ia] {
    if (std::filesystem::is_directory(ia->target)) return info_local(ia->target);
    auto c = client::FuserClient::connect(ia->target, client_options(ia->remote));
    exit_on_error(c.status());
    auto i = (*c)->get_info();
    exit_on_error(i.status());
    print_fuser_info(*i, ia->target);
  });

  auto sa = std::make_shared<SynthArgs>();
  CLI::App* synth = f->add_subcommand("synth", "Write a fuser directory with seeded random weights");
  synth->add_option("-o,--out", sa->out, "Output directory")->required();
  auto* sm = synth->add_option("--sharer", sa->sharer, "Sharer model file: shapes and fingerprint");
  auto* ss = synth->add_option("--sharer-shape", sa->sharer_shape, "Sharer KV shape LAYERS,KV_HEADS,HEAD_DIM, unbound");
  auto* rm = synth->add_option("--receiver", sa->receiver, "Receiver model file: shapes and fingerprint");
  auto* rs = synth->add_option("--receiver-shape", sa->receiver_shape, "Receiver KV shape, unbound");
  sm->excludes(ss);
  rm->excludes(rs);
  synth->add_option("--tokenizer-sharer", sa->tok_sharer, "Tokenizer of a llama2.c sharer (tokenizer.bin)")->needs(sm);
  synth->add_option("--tokenizer-receiver", sa->tok_receiver, "Tokenizer of a llama2.c receiver")->needs(rm);
  synth->add_option("--hidden", sa->hidden, "Projector hidden size")->check(CLI::Range(1, 1 << 16))->capture_default_str();
  synth->add_option("--intermediate", sa->intermediate, "FFN intermediate size")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  synth->add_option("--blocks", sa->blocks, "Projector depth num_layers (>= 2)")
      ->check(CLI::Range(2, 64))
      ->capture_default_str();
  synth->add_option("--gates", sa->gates, "Hard gates: all on, all off, or alternate by layer (t % 4)")
      ->check(CLI::IsMember({"on", "off", "alternate"}))
      ->capture_default_str();
  synth->add_option("--seed", sa->seed, "Random seed (same config and seed → identical bytes)")->capture_default_str();
  synth->add_option("--dtype", sa->dtype, "Weights dtype")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  synth->callback([sa] {
    if (sa->sharer.empty() && sa->sharer_shape.empty()) throw CLI::RequiredError("--sharer or --sharer-shape");
    if (sa->receiver.empty() && sa->receiver_shape.empty()) throw CLI::RequiredError("--receiver or --receiver-shape");
    run_synth(*sa);
  });
  register_fuser_dump(*f);
}

}  // namespace kvb::cli
