// GGUF tokenizer.ggml.* metadata → Vocab, with llama.cpp's defaults for absent keys.
#include <cmath>
#include <fmt/format.h>

#include "engine/gguf.h"
#include "engine/tokenizer_spm.h"
#include "engine/vocab_loaders.h"

namespace kvb {

namespace {

// llama.cpp's tokenizer.ggml.pre names (llama-vocab.cpp) → Vocab::pre, for the families we run.
struct PreName {
  std::string_view gguf, pre;
  bool ignore_merges;  // llama.cpp turns ignore_merges on with the pre type
};
constexpr PreName kPreNames[] = {
    {"gpt-2", "gpt2", false},          {"phi-2", "gpt2", false},
    {"gpt2", "gpt2", false},  // not llama.cpp's spelling, but Vocab::pre's (older kvbridge exports)
    {"qwen2", "qwen2", false},         {"deepseek-r1-qwen", "qwen2", false},
    {"llama-bpe", "llama-bpe", true},  {"llama3", "llama-bpe", true},
    {"llama-v3", "llama-bpe", true},
    // llama.cpp's group with the regexes {"\\p{N}", GPT-2's}: digits isolated, then GPT-2's split.
    {"smollm", "smollm", false},       {"starcoder", "smollm", false},  {"refact", "smollm", false},
    {"command-r", "smollm", false},    {"codeshell", "smollm", false},  {"exaone", "smollm", false},
    {"minerva-7b", "smollm", false},   {"mellum2", "smollm", false},
};

bool is_string_type(GgufType t) { return t == GgufType::kString; }
bool is_float_type(GgufType t) { return t == GgufType::kF32 || t == GgufType::kF64; }
bool is_integer_type(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

class VocabReader {
 public:
  explicit VocabReader(const GgufFile& f) : f_(f) {}

  Result<Vocab> read() {
    KVB_ASSIGN_OR_RETURN(std::optional<std::string> model, f_.get_string("tokenizer.ggml.model"));
    if (!model) return bad("tokenizer.ggml.model", "is missing");
    const bool spm = *model == "llama";
    if (spm) {
      v_.model = Vocab::Model::kSpm;
      v_.spm_flavor = Vocab::SpmFlavor::kLlamaCpp;
    } else if (*model == "gpt2") {
      v_.model = Vocab::Model::kBpe;
    } else {
      return unimplemented(fmt::format(
          "{}: tokenizer model '{}' is not supported (only \"llama\" and \"gpt2\")", f_.path(),
          *model));
    }
    KVB_RETURN_IF_ERROR(read_tokens());
    KVB_RETURN_IF_ERROR(read_scores());
    KVB_RETURN_IF_ERROR(read_merges());
    if (!spm) KVB_RETURN_IF_ERROR(read_pre());
    KVB_ASSIGN_OR_RETURN(std::optional<std::string> tmpl, f_.get_string("tokenizer.chat_template"));
    v_.chat_template = tmpl.value_or("");
    // llama.cpp defaults: SPM has unk 0, bos 1, eos 2; we give BPE none (llama.cpp's 11 is GPT-2's).
    KVB_RETURN_IF_ERROR(read_id("tokenizer.ggml.bos_token_id", spm ? 1 : -1, v_.bos));
    KVB_RETURN_IF_ERROR(read_id("tokenizer.ggml.eos_token_id", spm ? 2 : -1, v_.eos));
    KVB_RETURN_IF_ERROR(read_id("tokenizer.ggml.unknown_token_id", spm ? 0 : -1, v_.unk));
    KVB_RETURN_IF_ERROR(read_id("tokenizer.ggml.padding_token_id", -1, v_.pad));
    KVB_RETURN_IF_ERROR(read_flag("tokenizer.ggml.add_bos_token", spm, v_.add_bos));
    KVB_RETURN_IF_ERROR(read_flag("tokenizer.ggml.add_eos_token", false, v_.add_eos));
    KVB_RETURN_IF_ERROR(read_flag("tokenizer.ggml.add_space_prefix", spm, v_.add_space_prefix));
    KVB_RETURN_IF_ERROR(read_types());  // after the ids: inference needs them
    return std::move(v_);
  }

 private:
  Status bad(std::string_view key, std::string_view what) const {
    return invalid_argument(fmt::format("{}: metadata '{}' {}", f_.path(), key, what));
  }

  // The array under `key`, or null when absent; INVALID_ARGUMENT when not an array of `want`.
  Result<const GgufValue*> array(std::string_view key, bool (*elem_ok)(GgufType),
                                 std::string_view want) const {
    const GgufValue* v = f_.find(key);
    if (!v) return static_cast<const GgufValue*>(nullptr);
    if (v->type != GgufType::kArray || !elem_ok(v->array_type)) {
      return bad(key, fmt::format("is not an array of {}", want));
    }
    return v;
  }

  Status check_length(std::string_view key, size_t n) const {
    if (n != v_.pieces.size()) {
      return bad(key, fmt::format("has {} entries but tokenizer.ggml.tokens has {}", n,
                                  v_.pieces.size()));
    }
    return ok_status();
  }

  Status read_tokens() {
    constexpr std::string_view kKey = "tokenizer.ggml.tokens";
    KVB_ASSIGN_OR_RETURN(const GgufValue* a, array(kKey, is_string_type, "strings"));
    if (!a) return bad(kKey, "is missing");
    if (a->arr_str.empty()) return bad(kKey, "is empty");
    if (a->arr_str.size() > size_t(INT32_MAX)) return bad(kKey, "has more than INT32_MAX tokens");
    v_.pieces = a->arr_str;
    return ok_status();
  }

  Status read_scores() {
    constexpr std::string_view kKey = "tokenizer.ggml.scores";
    KVB_ASSIGN_OR_RETURN(const GgufValue* a, array(kKey, is_float_type, "floats"));
    if (!a) {
      v_.scores.assign(v_.pieces.size(), 0.f);
      return ok_status();
    }
    KVB_RETURN_IF_ERROR(check_length(kKey, a->arr_f.size()));
    v_.scores.resize(a->arr_f.size());
    for (size_t i = 0; i < a->arr_f.size(); ++i) {
      if (std::isnan(a->arr_f[i])) return bad(kKey, fmt::format("has a NaN at index {}", i));
      v_.scores[i] = float(a->arr_f[i]);
    }
    return ok_status();
  }

  Status read_types() {
    constexpr std::string_view kKey = "tokenizer.ggml.token_type";
    KVB_ASSIGN_OR_RETURN(const GgufValue* a, array(kKey, is_integer_type, "integers"));
    const size_t n = v_.pieces.size();
    if (!a) {
      // No types stored: infer the ones decoding depends on.
      v_.types.assign(n, TokenType::kNormal);
      for (size_t i = 0; i < n; ++i) {
        if (parse_byte_piece(v_.pieces[i])) v_.types[i] = TokenType::kByte;
      }
      for (int32_t id : {v_.bos, v_.eos, v_.pad}) {
        if (id >= 0) v_.types[size_t(id)] = TokenType::kControl;
      }
      if (v_.unk >= 0) v_.types[size_t(v_.unk)] = TokenType::kUnknown;
      return ok_status();
    }
    KVB_RETURN_IF_ERROR(check_length(kKey, a->arr_i.size()));
    v_.types.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t t = a->arr_i[i];
      if (t < int64_t(TokenType::kUndefined) || t > int64_t(TokenType::kByte)) {
        return bad(kKey, fmt::format("has type {} at index {} (valid: 0..6)", t, i));
      }
      v_.types[i] = TokenType(int32_t(t));
    }
    return ok_status();
  }

  Status read_merges() {
    constexpr std::string_view kKey = "tokenizer.ggml.merges";
    KVB_ASSIGN_OR_RETURN(const GgufValue* a, array(kKey, is_string_type, "strings"));
    if (a && v_.model == Vocab::Model::kBpe) v_.merges = a->arr_str;
    return ok_status();
  }

  // BPE: the pre-tokenizer family. Absent (GGUFs converted before llama.cpp had the key) falls
  // back to "gpt2", where llama.cpp warns and uses a GPT-2-like default; a name we do not run is
  // UNIMPLEMENTED, which leaves a model loadable without a tokenizer (weights_gguf.cpp).
  Status read_pre() {
    constexpr std::string_view kKey = "tokenizer.ggml.pre";
    KVB_ASSIGN_OR_RETURN(std::optional<std::string> pre, f_.get_string(kKey));
    if (!pre) {
      v_.pre = "gpt2";
      return ok_status();
    }
    for (const PreName& p : kPreNames) {
      if (p.gguf == *pre) {
        v_.pre = p.pre;
        v_.ignore_merges = p.ignore_merges;
        return ok_status();
      }
    }
    return unimplemented(fmt::format(
        "{}: BPE pre-tokenizer '{}' ({}) is not supported (supported: gpt-2, phi-2, gpt2, qwen2, "
        "deepseek-r1-qwen, llama-bpe, llama3, llama-v3)",
        f_.path(), *pre, kKey));
  }

  // llama.cpp keeps the default when the stored id is out of range (files write u32 -1 for none).
  Status read_id(std::string_view key, int32_t def, int32_t& out) const {
    KVB_ASSIGN_OR_RETURN(std::optional<int64_t> id, f_.get_int(key));
    out = id && *id >= 0 && *id < int64_t(v_.pieces.size()) ? int32_t(*id) : def;
    if (out >= v_.n_vocab()) out = -1;  // a default that this small vocab cannot hold
    return ok_status();
  }

  Status read_flag(std::string_view key, bool def, bool& out) const {
    KVB_ASSIGN_OR_RETURN(std::optional<bool> b, f_.get_bool(key));
    out = b.value_or(def);
    return ok_status();
  }

  const GgufFile& f_;
  Vocab v_;
};

}  // namespace

Result<Vocab> read_gguf_vocab(const GgufFile& f) { return VocabReader(f).read(); }

}  // namespace kvb
