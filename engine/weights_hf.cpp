// Hugging Face model directory loader, in named steps: config → weights index → vocab → tensors.
//
//   config.json                     model_type (llama, qwen2, qwen3) and the hyper-parameters
//   model.safetensors               the weights, or
//   model.safetensors.index.json    {"weight_map": {tensor: shard file}} and the shard files
//   generation_config.json          optional: eos_token_id (int or list) ends generation
//   tokenizer files                 engine/vocab_loaders.h read_hf_vocab
//
// Tensors are used in place from the mmapped files (F32/F16/BF16 matrices as stored); only norm
// and bias vectors stored in 16 bits are converted to f32. Hugging Face keeps Q/K rows in the
// order of rotate_half (NeoX pairing) for every family here, so the config's RoPE is kNeox.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/model_loaders.h"
#include "engine/vocab_loaders.h"

namespace kvb {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Reads and parses a JSON object file. NOT_FOUND when absent; INVALID_ARGUMENT naming the file when
// it is not a JSON object.
Result<json> read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(fmt::format("{}: cannot open", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(fmt::format("{}: not a JSON object", path.string()));
  return j;
}

// Typed access to one JSON object's keys, with errors naming the file and key. A key whose value
// is null counts as absent (config.json writes "head_dim": null, "rope_scaling": null).
class JsonFields {
 public:
  JsonFields(const json& j, std::string file) : j_(j), file_(std::move(file)) {}

  const json* find(std::string_view key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  Status error(std::string_view key, std::string_view what) const {
    return invalid_argument(fmt::format("{}: \"{}\" {}", file_, key, what));
  }

  Result<std::optional<int64_t>> get_int(std::string_view key) const {
    const json* v = find(key);
    if (!v) return std::optional<int64_t>();
    if (!v->is_number_integer()) return error(key, fmt::format("must be an integer, got {}", v->dump()));
    return std::optional<int64_t>(v->get<int64_t>());
  }
  Result<int32_t> positive(std::string_view key, std::optional<int64_t> def = {}) const {
    KVB_ASSIGN_OR_RETURN(auto v, get_int(key));
    if (!v && !def) return error(key, "is missing");
    const int64_t x = v.value_or(def.value_or(0));
    if (x <= 0 || x > (int64_t(1) << 30)) return error(key, fmt::format("= {} is out of range", x));
    return int32_t(x);
  }
  Result<double> number(std::string_view key, double def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_number()) return error(key, fmt::format("must be a number, got {}", v->dump()));
    return v->get<double>();
  }
  Result<bool> flag(std::string_view key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) return error(key, fmt::format("must be true or false, got {}", v->dump()));
    return v->get<bool>();
  }
  Result<std::optional<std::string>> string(std::string_view key) const {
    const json* v = find(key);
    if (!v) return std::optional<std::string>();
    if (!v->is_string()) return error(key, fmt::format("must be a string, got {}", v->dump()));
    return std::optional<std::string>(v->get<std::string>());
  }
  // An int or a list of ints (eos_token_id), appended to `out` when in [0, limit).
  Status ids(std::string_view key, int64_t limit, std::vector<int32_t>& out) const {
    const json* v = find(key);
    if (!v) return Status::Ok();
    std::vector<json> items = v->is_array() ? v->get<std::vector<json>>() : std::vector<json>{*v};
    for (const json& i : items) {
      if (!i.is_number_integer()) return error(key, fmt::format("must be an id or a list of ids, got {}", v->dump()));
      const int64_t id = i.get<int64_t>();
      if (id >= 0 && id < limit && std::find(out.begin(), out.end(), int32_t(id)) == out.end()) {
        out.push_back(int32_t(id));
      }
    }
    return Status::Ok();
  }

 private:
  const json& j_;
  std::string file_;
};

class HfModelLoader {
 public:
  HfModelLoader(std::string dir, Model& m) : dir_(std::move(dir)), m_(m) {}

  // config.json → Arch and ModelConfig (vocab size checked again against the embedding).
  Status load_config() {
    const fs::path path = fs::path(dir_) / "config.json";
    auto j = read_json(path);
    if (!j.ok()) {
      if (j.status().code() == StatusCode::kNotFound) {
        return not_found(fmt::format("{}: no config.json (not a Hugging Face model directory)", dir_));
      }
      return j.status();
    }
    config_ = std::move(j).value();
    const JsonFields f(config_, path.string());
    ModelConfig& c = m_.config;
    KVB_ASSIGN_OR_RETURN(auto model_type, f.string("model_type"));
    if (!model_type) return f.error("model_type", "is missing");
    const std::optional<Arch> arch = arch_from_name(*model_type);
    if (!arch) {
      return f.error("model_type", fmt::format("'{}' is not supported (supported: llama, qwen2, qwen3)", *model_type));
    }
    c.arch = *arch;
    KVB_ASSIGN_OR_RETURN(c.n_layer, f.positive("num_hidden_layers"));
    KVB_ASSIGN_OR_RETURN(c.n_embd, f.positive("hidden_size"));
    KVB_ASSIGN_OR_RETURN(c.n_ff, f.positive("intermediate_size"));
    KVB_ASSIGN_OR_RETURN(c.n_head, f.positive("num_attention_heads"));
    KVB_ASSIGN_OR_RETURN(c.n_head_kv, f.positive("num_key_value_heads", c.n_head));
    KVB_ASSIGN_OR_RETURN(c.n_vocab, f.positive("vocab_size"));
    KVB_ASSIGN_OR_RETURN(auto head_dim, f.get_int("head_dim"));
    if (!head_dim && c.n_embd % c.n_head != 0) {
      return f.error("hidden_size", fmt::format("{} is not divisible by num_attention_heads {} (and no head_dim)",
                                                c.n_embd, c.n_head));
    }
    KVB_ASSIGN_OR_RETURN(c.head_dim, f.positive("head_dim", c.n_embd / c.n_head));
    // Transformers' defaults for these families when a key is absent.
    KVB_ASSIGN_OR_RETURN(c.n_ctx_train,
                         f.positive("max_position_embeddings", c.arch == Arch::kLlama ? 2048 : 32768));
    KVB_ASSIGN_OR_RETURN(const double eps, f.number("rms_norm_eps", 1e-6));
    c.norm_eps = float(eps);
    KVB_ASSIGN_OR_RETURN(c.tied_output, f.flag("tie_word_embeddings", false));
    KVB_ASSIGN_OR_RETURN(auto act, f.string("hidden_act"));
    if (act && *act != "silu") return f.error("hidden_act", fmt::format("'{}' is not supported (silu)", *act));
    // Blocks kvbridge does not run: reject rather than silently compute another model.
    KVB_ASSIGN_OR_RETURN(const bool mlp_bias, f.flag("mlp_bias", false));
    if (mlp_bias) return f.error("mlp_bias", "= true is not supported");
    if (c.arch != Arch::kQwen2) {
      KVB_ASSIGN_OR_RETURN(const bool attn_bias, f.flag("attention_bias", false));
      if (attn_bias) return f.error("attention_bias", fmt::format("= true is not supported for {}", *model_type));
    }
    KVB_ASSIGN_OR_RETURN(const bool sliding, f.flag("use_sliding_window", false));
    if (sliding) return f.error("use_sliding_window", "= true is not supported");
    KVB_RETURN_IF_ERROR(load_rope(f));
    return c.validate().with_context(path.string());
  }

  // generation_config.json (optional) and config.json: the ids that end a generation.
  Status load_generation_config() {
    const fs::path path = fs::path(dir_) / "generation_config.json";
    auto j = read_json(path);
    if (j.ok()) KVB_RETURN_IF_ERROR(JsonFields(*j, path.string()).ids("eos_token_id", m_.config.n_vocab, m_.eos_ids));
    if (!j.ok() && j.status().code() != StatusCode::kNotFound) return j.status();
    return JsonFields(config_, config_path()).ids("eos_token_id", m_.config.n_vocab, m_.eos_ids);
  }

  // model.safetensors, or model.safetensors.index.json and every shard it names.
  Status open_weights() {
    const fs::path single = fs::path(dir_) / "model.safetensors";
    const fs::path index = fs::path(dir_) / "model.safetensors.index.json";
    std::error_code ec;
    std::vector<SafetensorsFile>& files = m_.storage->safetensors;
    if (fs::exists(index, ec)) {
      weights_file_ = index.string();
      KVB_ASSIGN_OR_RETURN(json j, read_json(index));
      const auto map = j.find("weight_map");
      if (map == j.end() || !map->is_object()) {
        return invalid_argument(fmt::format("{}: missing object \"weight_map\"", index.string()));
      }
      std::map<std::string, size_t> shard_index;
      for (auto it = map->begin(); it != map->end(); ++it) {
        if (!it->is_string()) {
          return invalid_argument(fmt::format("{}: weight_map[\"{}\"] is not a file name", index.string(), it.key()));
        }
        const std::string shard = it->get<std::string>();
        if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
          return invalid_argument(
              fmt::format("{}: weight_map[\"{}\"] = \"{}\" is not a plain file name", index.string(), it.key(), shard));
        }
        auto [pos, added] = shard_index.emplace(shard, files.size());
        if (added) {
          auto f = SafetensorsFile::open((fs::path(dir_) / shard).string());
          if (!f.ok()) {
            return invalid_argument(
                fmt::format("{}: shard \"{}\": {}", index.string(), shard, f.status().message()));
          }
          files.push_back(std::move(f).value());
        }
        location_[it.key()] = pos->second;
      }
      return Status::Ok();
    }
    if (!fs::exists(single, ec)) {
      return invalid_argument(fmt::format(
          "{}: no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)", dir_));
    }
    weights_file_ = single.string();
    KVB_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(single.string()));
    for (const SafetensorsEntry& e : f.entries()) location_[e.name] = 0;
    files.push_back(std::move(f));
    return Status::Ok();
  }

  Status load_vocab() {
    const std::string_view pre = m_.config.arch == Arch::kLlama ? "llama-bpe" : "qwen2";
    KVB_RETURN_IF_ERROR(attach_tokenizer(m_, read_hf_vocab(dir_, pre)));
    if (m_.tokenizer && m_.tokenizer->n_vocab() > m_.config.n_vocab) {
      return invalid_argument(fmt::format("{}: the tokenizer has {} tokens but vocab_size is {}", dir_,
                                          m_.tokenizer->n_vocab(), m_.config.n_vocab));
    }
    return Status::Ok();
  }

  Status load_tensors() {
    const ModelConfig& c = m_.config;
    ModelWeights& w = m_.weights;
    KVB_ASSIGN_OR_RETURN(w.tok_embd, matrix("model.embed_tokens.weight", c.n_vocab, c.n_embd));
    KVB_ASSIGN_OR_RETURN(w.output_norm, vector("model.norm.weight", c.n_embd));
    if (c.tied_output) {
      w.output = w.tok_embd;  // a stored lm_head.weight is ignored, as transformers ties it
    } else {
      KVB_ASSIGN_OR_RETURN(w.output, matrix("lm_head.weight", c.n_vocab, c.n_embd));
    }
    static constexpr LayerTensorNames kNames = {
        "model.layers.{}.input_layernorm.weight",  "model.layers.{}.self_attn.q_proj.weight",
        "model.layers.{}.self_attn.k_proj.weight", "model.layers.{}.self_attn.v_proj.weight",
        "model.layers.{}.self_attn.q_proj.bias",   "model.layers.{}.self_attn.k_proj.bias",
        "model.layers.{}.self_attn.v_proj.bias",   "model.layers.{}.self_attn.q_norm.weight",
        "model.layers.{}.self_attn.k_norm.weight", "model.layers.{}.self_attn.o_proj.weight",
        "model.layers.{}.post_attention_layernorm.weight", "model.layers.{}.mlp.gate_proj.weight",
        "model.layers.{}.mlp.up_proj.weight",      "model.layers.{}.mlp.down_proj.weight"};
    KVB_RETURN_IF_ERROR(load_layer_tensors(
        c, kNames, [this](const std::string& n, int64_t r, int64_t k) { return matrix(n, r, k); },
        [this](const std::string& n, int64_t len) { return vector(n, len); }, w));
    return Status::Ok();
  }

 private:
  // rope_theta and rope_scaling (or, from newer transformers, one "rope_parameters" object).
  Status load_rope(const JsonFields& f) {
    ModelConfig& c = m_.config;
    c.rope.type = RopeType::kNeox;
    c.rope.n_rot = c.head_dim;
    const json* params = f.find("rope_parameters");
    const json* scaling = params ? params : f.find("rope_scaling");
    const std::string key = params ? "rope_parameters" : "rope_scaling";
    if (scaling && !scaling->is_object()) return f.error(key, "must be an object or null");
    const json none = json::object();
    const JsonFields s(scaling ? *scaling : none, fmt::format("{}: \"{}\"", config_path(), key));
    KVB_ASSIGN_OR_RETURN(const double nested_theta, s.number("rope_theta", 10000.0));
    KVB_ASSIGN_OR_RETURN(const double theta, f.number("rope_theta", nested_theta));
    c.rope.theta_base = float(theta);
    if (!scaling) return Status::Ok();
    KVB_ASSIGN_OR_RETURN(auto type, s.string("rope_type"));
    KVB_ASSIGN_OR_RETURN(auto legacy_type, s.string("type"));
    const std::string t = type.value_or(legacy_type.value_or("default"));
    if (t == "default") return Status::Ok();
    KVB_ASSIGN_OR_RETURN(const double factor, s.number("factor", 0.0));
    if (t == "linear") {
      if (!(factor > 0.0)) return s.error("factor", "must be > 0");
      c.rope.freq_scale = float(1.0 / factor);
      return Status::Ok();
    }
    if (t != "llama3") return s.error("rope_type", fmt::format("'{}' is not supported (default, linear, llama3)", t));
    Llama3RopeScaling l3;
    l3.factor = float(factor);
    KVB_ASSIGN_OR_RETURN(const double low, s.number("low_freq_factor", 1.0));
    KVB_ASSIGN_OR_RETURN(const double high, s.number("high_freq_factor", 4.0));
    l3.low_freq_factor = float(low);
    l3.high_freq_factor = float(high);
    KVB_ASSIGN_OR_RETURN(l3.original_max_position, s.positive("original_max_position_embeddings", 8192));
    auto factors = llama3_rope_freq_factors(c.rope.n_rot, c.rope.theta_base, l3);
    if (!factors.ok()) return factors.status().with_context(config_path());
    c.rope_freq_factors = std::move(factors).value();
    return Status::Ok();
  }

  std::string config_path() const { return (fs::path(dir_) / "config.json").string(); }

  Status error(const std::string& what) const { return invalid_argument(fmt::format("{}: {}", weights_file_, what)); }

  Result<Tensor> find(const std::string& name) {
    const auto it = location_.find(name);
    if (it == location_.end()) return error(fmt::format("missing tensor '{}'", name));
    const SafetensorsFile& f = m_.storage->safetensors[it->second];
    const SafetensorsEntry* e = f.find(name);
    if (!e) {
      return invalid_argument(fmt::format("{}: missing tensor '{}' (the index names this shard)", f.path(), name));
    }
    return f.view(*e);
  }

  Status shape_error(const std::string& name, const Tensor& t, const std::string& want) {
    const auto it = location_.find(name);
    return invalid_argument(fmt::format("{}: tensor '{}' is {}, expected {} (from config.json)",
                                        m_.storage->safetensors[it->second].path(), name, t.describe(), want));
  }

  // A matrix [rows][cols] in its stored dtype.
  Result<Tensor> matrix(const std::string& name, int64_t rows, int64_t cols) {
    KVB_ASSIGN_OR_RETURN(Tensor t, find(name));
    if (t.n_dims != 2 || t.shape[0] != rows || t.shape[1] != cols) {
      return shape_error(name, t, fmt::format("[{}][{}]", rows, cols));
    }
    return t;
  }

  // A vector [n], converted to f32 when stored in 16 bits.
  Result<Tensor> vector(const std::string& name, int64_t n) {
    KVB_ASSIGN_OR_RETURN(Tensor t, find(name));
    if (t.n_dims != 1 || t.shape[0] != n) return shape_error(name, t, fmt::format("[{}]", n));
    if (t.dtype == DType::kF32) return t;
    auto& buf = m_.storage->owned.emplace_back(size_t(n));
    to_f32(t.dtype, t.data, buf.data(), n);
    return Tensor::make(DType::kF32, buf.data(), {n});
  }

  std::string dir_;
  Model& m_;
  json config_;
  std::string weights_file_;                 // model.safetensors or the index: named in errors
  std::map<std::string, size_t> location_;   // tensor name → index in storage->safetensors
};

}  // namespace

Result<std::unique_ptr<Model>> load_hf_model(const std::string& dir, const LoadOptions&) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return not_found(fmt::format("{}: no such model directory", dir));
  auto m = std::make_unique<Model>();
  m->format = ModelFormat::kHf;
  m->path = dir;
  m->storage = std::make_shared<Model::Storage>();
  HfModelLoader loader(dir, *m);
  KVB_RETURN_IF_ERROR(loader.load_config());
  KVB_RETURN_IF_ERROR(loader.load_generation_config());
  KVB_RETURN_IF_ERROR(loader.open_weights());
  KVB_RETURN_IF_ERROR(loader.load_vocab());
  KVB_RETURN_IF_ERROR(loader.load_tensors());
  KVB_RETURN_IF_ERROR(m->config.validate().with_context(dir));
  return m;
}

}  // namespace kvb
