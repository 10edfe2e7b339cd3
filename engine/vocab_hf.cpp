// Hugging Face tokenizer files → byte-level BPE Vocab (see engine/vocab_loaders.h).
//
// Steps: the token entries (model vocab, then added tokens) and merges from tokenizer.json or
// vocab.json + merges.txt or encoder.json + vocab.bpe; tokenizer_config.json's added tokens; the
// pre-tokenizer family; generated Llama 3 specials when asked for; the entries laid out by id; then
// special token ids, flags and the chat template. JSON access may throw inside this file; read_hf_vocab
// converts every exception to INVALID_ARGUMENT naming the file being read.
#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "engine/unicode_regex.h"
#include "engine/vocab_loaders.h"

namespace kvb {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Token ids beyond this are rejected, and so are vocabs whose ids leave more than kMaxIdGaps
// unassigned ids (filled with empty kUnused tokens): a malformed file must not make us allocate
// gigabytes.
constexpr int64_t kMaxTokenId = (int64_t(1) << 24) - 1;
constexpr int64_t kMaxIdGaps = int64_t(1) << 16;

// Llama 3.1 / 3.2 special tokens 128000..128255 (Meta's tokenizer_config.json); the GPT-2-layout
// encoder.json of Llama 3 leaves them out. All are control tokens.
constexpr int32_t kLlama3FirstSpecial = 128000;
constexpr int32_t kLlama3Bos = 128000;  // <|begin_of_text|>
constexpr int32_t kLlama3Eos = 128009;  // <|eot_id|>, the end of a turn (Llama 3.2 Instruct's eos)
std::string llama3_special(int32_t id) {
  switch (id) {
    case 128000: return "<|begin_of_text|>";
    case 128001: return "<|end_of_text|>";
    case 128002: return "<|reserved_special_token_0|>";
    case 128003: return "<|reserved_special_token_1|>";
    case 128004: return "<|finetune_right_pad_id|>";
    case 128005: return "<|reserved_special_token_2|>";
    case 128006: return "<|start_header_id|>";
    case 128007: return "<|end_header_id|>";
    case 128008: return "<|eom_id|>";
    case 128009: return "<|eot_id|>";
    case 128010: return "<|python_tag|>";
    default: return fmt::format("<|reserved_special_token_{}|>", id - 128011 + 3);  // 3..247
  }
}

std::string shown(std::string_view s) {
  constexpr size_t kMax = 80;
  return s.size() <= kMax ? fmt::format("'{}'", s) : fmt::format("'{}...'", s.substr(0, kMax));
}

// obj[key], or null when obj is not an object or has no such key (no copy, no exception).
const json& field(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

struct Entry {
  int64_t id;
  std::string piece;
  TokenType type;
  std::string_view source;  // which list it came from, for error messages
};

class HfReader {
 public:
  HfReader(std::string dir, std::string_view hint) : dir_(std::move(dir)), hint_(hint) {}

  // The file being read, for the exception-to-Status conversion.
  const std::string& current_file() const { return file_; }

  Result<Vocab> read() {
    if (!hint_.empty() && !is_known_pre(hint_)) {
      return invalid_argument(fmt::format("read_hf_vocab({}): unknown pre-tokenizer hint '{}' "
                                          "(known: gpt2, qwen2, llama-bpe)", dir_, hint_));
    }
    std::error_code ec;
    if (!fs::is_directory(dir_, ec)) return not_found(fmt::format("{}: no such directory", dir_));
    const fs::path d(dir_);
    if (is_file(d / "tokenizer.json")) {
      KVB_RETURN_IF_ERROR(read_tokenizer_json(d / "tokenizer.json"));
    } else if (is_file(d / "vocab.json")) {
      KVB_RETURN_IF_ERROR(read_vocab_and_merges(d / "vocab.json", d / "merges.txt"));
    } else if (is_file(d / "encoder.json")) {
      KVB_RETURN_IF_ERROR(read_vocab_and_merges(d / "encoder.json", d / "vocab.bpe"));
    } else {
      return not_found(fmt::format(
          "{}: no tokenizer.json, vocab.json + merges.txt or encoder.json + vocab.bpe", dir_));
    }
    const fs::path cfg_path = d / "tokenizer_config.json";
    json cfg;
    if (is_file(cfg_path)) {
      KVB_ASSIGN_OR_RETURN(cfg, parse_json(cfg_path));
      if (!cfg.is_object()) return bad("is not a JSON object");
      KVB_RETURN_IF_ERROR(read_added_tokens_decoder(cfg));
    }
    file_ = dir_;
    KVB_RETURN_IF_ERROR(resolve_pre(cfg));
    add_llama3_specials();
    KVB_RETURN_IF_ERROR(lay_out());
    if (cfg.is_object()) {
      file_ = cfg_path.string();
      KVB_RETURN_IF_ERROR(apply_config(cfg));
    }
    KVB_RETURN_IF_ERROR(apply_defaults(cfg.is_object()));
    if (v_.chat_template.empty() && is_file(d / "chat_template.jinja")) {
      KVB_ASSIGN_OR_RETURN(v_.chat_template, read_text(d / "chat_template.jinja"));
    }
    return std::move(v_);
  }

 private:
  Status bad(std::string_view what) const {
    return invalid_argument(fmt::format("{}: {}", file_, what));
  }

  Result<std::string> read_text(const fs::path& p) {
    file_ = p.string();
    std::ifstream f(p, std::ios::binary);
    if (!f) return not_found(fmt::format("{}: cannot open", file_));
    std::stringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return bad("read error");
    return ss.str();
  }

  Result<json> parse_json(const fs::path& p) {
    KVB_ASSIGN_OR_RETURN(std::string text, read_text(p));
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return bad("is not valid JSON");
    return j;
  }

  // ------------------------------------------------------------------------------------------
  // Token entries and merges
  // ------------------------------------------------------------------------------------------

  Result<int64_t> token_id(const json& v, std::string_view what) const {
    if (!v.is_number_integer()) return bad(fmt::format("{}: the id is not an integer", what));
    const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(kMaxTokenId)
                                                 : v.get<int64_t>() >= 0 && v.get<int64_t>() <= kMaxTokenId;
    if (!in_range) return bad(fmt::format("{}: id {} is outside [0, {}]", what, v.dump(), kMaxTokenId));
    return v.get<int64_t>();
  }

  Status read_model_vocab(const json& vocab, std::string_view where) {
    if (!vocab.is_object()) return bad(fmt::format("{} is not an object of piece → id", where));
    entries_.reserve(entries_.size() + vocab.size());
    for (const auto& [piece, id] : vocab.items()) {
      KVB_ASSIGN_OR_RETURN(int64_t i, token_id(id, fmt::format("{} {}", where, shown(piece))));
      entries_.push_back({i, piece, TokenType::kNormal, where});
    }
    return ok_status();
  }

  Status add_merge(std::string left, std::string_view right, size_t index) {
    if (left.empty() || right.empty() || left.find(' ') != std::string::npos ||
        right.find(' ') != std::string_view::npos) {
      return bad(fmt::format("merge {} ({} {}) is not two non-empty pieces without spaces "
                             "(byte-level pieces never contain one)",
                             index, shown(left), shown(right)));
    }
    left += ' ';
    left += right;
    v_.merges.push_back(std::move(left));
    return ok_status();
  }

  // "left right" (merges.txt, tokenizer.json's older form): exactly one space.
  Status add_merge_line(std::string_view line, size_t index) {
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos) {
      return bad(fmt::format("merge {} {} is not \"left right\"", index, shown(line)));
    }
    return add_merge(std::string(line.substr(0, sp)), line.substr(sp + 1), index);
  }

  Status read_tokenizer_json(const fs::path& p) {
    KVB_ASSIGN_OR_RETURN(json j, parse_json(p));
    if (!j.is_object()) return bad("is not a JSON object");
    if (!j.contains("model") || !j["model"].is_object()) return bad("has no \"model\" object");
    const json& m = j["model"];
    if (m.contains("type") && m["type"] != "BPE") {
      return unimplemented(fmt::format("{}: tokenizer model {} is not supported (only byte-level BPE)",
                                       file_, m["type"].dump()));
    }
    if (m.value("byte_fallback", false)) {
      return unimplemented(fmt::format(
          "{}: a BPE with byte_fallback (SentencePiece-style, e.g. Llama 2) is not byte-level BPE; "
          "use its GGUF or tokenizer.model", file_));
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (m.contains(key) && !m[key].is_null() && m[key] != "") {
        return unimplemented(fmt::format("{}: model.{} is not supported", file_, key));
      }
    }
    KVB_RETURN_IF_ERROR(read_model_vocab(field(m, "vocab"), "model.vocab"));
    if (!m.contains("merges") || !m["merges"].is_array()) return bad("model.merges is not an array");
    const json& merges = m["merges"];
    v_.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& e = merges[i];
      if (e.is_string()) {
        KVB_RETURN_IF_ERROR(add_merge_line(e.get_ref<const std::string&>(), i));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        KVB_RETURN_IF_ERROR(add_merge(e[0].get<std::string>(), e[1].get_ref<const std::string&>(), i));
      } else {
        return bad(fmt::format("model.merges[{}] is neither \"left right\" nor [left, right]", i));
      }
    }
    if (m.contains("ignore_merges")) {
      if (!m["ignore_merges"].is_boolean()) return bad("model.ignore_merges is not a boolean");
      ignore_merges_ = m["ignore_merges"].get<bool>();
    }
    if (m.contains("unk_token") && m["unk_token"].is_string()) unk_text_ = m["unk_token"].get<std::string>();
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      const json& added = j["added_tokens"];
      if (!added.is_array()) return bad("added_tokens is not an array");
      for (size_t i = 0; i < added.size(); ++i) {
        const json& t = added[i];
        if (!t.is_object() || !t.contains("id") || !t.contains("content") || !t["content"].is_string()) {
          return bad(fmt::format("added_tokens[{}] is not an object with an id and a content", i));
        }
        KVB_ASSIGN_OR_RETURN(int64_t id, token_id(t["id"], fmt::format("added_tokens[{}]", i)));
        KVB_RETURN_IF_ERROR(add_added_token(id, t["content"].get<std::string>(), t.value("special", false),
                                            "added_tokens"));
      }
    }
    KVB_RETURN_IF_ERROR(check_normalizer(field(j, "normalizer")));
    if (j.contains("pre_tokenizer")) {
      KVB_ASSIGN_OR_RETURN(file_pre_, pre_of(j["pre_tokenizer"]));
    }
    if (j.contains("post_processor")) read_post_processor(j["post_processor"]);
    return ok_status();
  }

  Status read_vocab_and_merges(const fs::path& vocab, const fs::path& merges) {
    if (!is_file(merges)) {
      return not_found(fmt::format("{}: {} has no {} beside it", dir_, vocab.filename().string(),
                                   merges.filename().string()));
    }
    KVB_ASSIGN_OR_RETURN(json j, parse_json(vocab));
    KVB_RETURN_IF_ERROR(read_model_vocab(j, "the vocab"));
    KVB_ASSIGN_OR_RETURN(std::string text, read_text(merges));
    size_t line_no = 0;
    for (size_t pos = 0; pos < text.size();) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      // HF skips "#version" lines; blank lines carry nothing.
      if (line.empty() || line.rfind("#version", 0) == 0) continue;
      if (std::count(line.begin(), line.end(), ' ') != 1) {
        return bad(fmt::format("line {} {} is not \"left right\"", line_no, shown(line)));
      }
      KVB_RETURN_IF_ERROR(add_merge_line(line, v_.merges.size()));
    }
    return ok_status();
  }

  // Hugging Face added tokens: special ones are control tokens, the others user-defined.
  Status add_added_token(int64_t id, std::string content, bool special, std::string_view source) {
    if (content.empty()) return bad(fmt::format("{}: token {} has empty content", source, id));
    entries_.push_back({id, std::move(content), special ? TokenType::kControl : TokenType::kUserDefined, source});
    return ok_status();
  }

  Status read_added_tokens_decoder(const json& cfg) {
    if (!cfg.contains("added_tokens_decoder") || cfg["added_tokens_decoder"].is_null()) return ok_status();
    const json& dec = cfg["added_tokens_decoder"];
    if (!dec.is_object()) return bad("added_tokens_decoder is not an object");
    for (const auto& [key, t] : dec.items()) {
      int64_t id = -1;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id > kMaxTokenId) {
        return bad(fmt::format("added_tokens_decoder key {} is not a token id in [0, {}]", shown(key),
                               kMaxTokenId));
      }
      if (!t.is_object() || !t.contains("content") || !t["content"].is_string()) {
        return bad(fmt::format("added_tokens_decoder[{}] has no string content", key));
      }
      KVB_RETURN_IF_ERROR(add_added_token(id, t["content"].get<std::string>(), t.value("special", false),
                                          "added_tokens_decoder"));
    }
    return ok_status();
  }

  // ------------------------------------------------------------------------------------------
  // Pre-tokenizer, normalizer, post-processor
  // ------------------------------------------------------------------------------------------

  Status check_byte_level(const json& p) const {
    if (p.value("add_prefix_space", false)) {
      return unimplemented(fmt::format("{}: ByteLevel add_prefix_space is not supported", file_));
    }
    return ok_status();
  }

  // The family a tokenizer.json pre_tokenizer names; nullopt when it is null.
  Result<std::optional<std::string>> pre_of(const json& pt) const {
    if (pt.is_null()) return std::optional<std::string>();
    if (!pt.is_object() || !pt.contains("type") || !pt["type"].is_string()) {
      return bad("pre_tokenizer is not an object with a type");
    }
    const std::string type = pt["type"].get<std::string>();
    if (type == "ByteLevel") {
      KVB_RETURN_IF_ERROR(check_byte_level(pt));
      if (!pt.value("use_regex", true)) {
        return unimplemented(fmt::format("{}: ByteLevel without a split regex is not supported", file_));
      }
      return std::optional<std::string>("gpt2");
    }
    if (type == "Split") {
      const json& pat = field(pt, "pattern");
      if (!pat.is_object() || !pat.contains("Regex") || !pat["Regex"].is_string()) {
        return unimplemented(fmt::format("{}: a Split pre-tokenizer without a Regex pattern is not supported", file_));
      }
      const std::string& re = pat["Regex"].get_ref<const std::string&>();
      if (pt.value("behavior", std::string("Isolated")) != "Isolated" || pt.value("invert", false)) {
        return unimplemented(fmt::format("{}: Split behavior other than Isolated (not inverted) is not supported", file_));
      }
      const auto pre = pre_from_hf_regex(re);
      if (!pre) {
        return unimplemented(fmt::format(
            "{}: pre-tokenizer regex {} is not one kvbridge knows (gpt2, qwen2, llama-bpe)", file_,
            shown(re)));
      }
      return std::optional<std::string>(std::string(*pre));
    }
    if (type == "Sequence") {
      if (!pt.contains("pretokenizers") || !pt["pretokenizers"].is_array()) {
        return bad("pre_tokenizer Sequence has no pretokenizers array");
      }
      std::optional<std::string> found;
      for (const json& p : pt["pretokenizers"]) {
        std::optional<std::string> one;
        if (p.is_object() && p.value("type", std::string()) == "ByteLevel" && !p.value("use_regex", true)) {
          KVB_RETURN_IF_ERROR(check_byte_level(p));  // the byte mapping after a Split: no split
          continue;
        }
        KVB_ASSIGN_OR_RETURN(one, pre_of(p));
        if (!one) continue;
        if (found) {
          return unimplemented(fmt::format("{}: more than one split in pre_tokenizer is not supported", file_));
        }
        found = one;
      }
      return found;
    }
    return unimplemented(fmt::format("{}: pre-tokenizer type {} is not supported", file_, shown(type)));
  }

  // NFC is accepted and not applied: llama.cpp does not normalize either, and NFC text (nearly
  // all text) is unaffected. Anything else would change the ids.
  Status check_normalizer(const json& n) const {
    if (n.is_null()) return ok_status();
    const std::string type = n.is_object() ? n.value("type", std::string()) : std::string();
    if (type == "NFC") return ok_status();
    if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
      for (const json& e : n["normalizers"]) KVB_RETURN_IF_ERROR(check_normalizer(e));
      return ok_status();
    }
    return unimplemented(fmt::format("{}: normalizer {} is not supported", file_, shown(n.dump())));
  }

  // TemplateProcessing (alone or in a Sequence): a special token first in "single" is the BOS.
  void read_post_processor(const json& pp) {
    if (!pp.is_object()) return;
    const std::string type = pp.value("type", std::string());
    if (type == "Sequence" && pp.contains("processors") && pp["processors"].is_array()) {
      for (const json& p : pp["processors"]) read_post_processor(p);
      return;
    }
    if (type != "TemplateProcessing" || !pp.contains("single") || !pp["single"].is_array()) return;
    const json& single = pp["single"];
    auto special = [](const json& e) -> std::optional<std::string> {
      if (e.is_object() && e.contains("SpecialToken") && e["SpecialToken"].is_object() &&
          e["SpecialToken"].contains("id") && e["SpecialToken"]["id"].is_string()) {
        return e["SpecialToken"]["id"].get<std::string>();
      }
      return std::nullopt;
    };
    post_add_bos_ = !single.empty() && special(single.front()).has_value();
    post_add_eos_ = single.size() > 1 && special(single.back()).has_value();
    if (*post_add_bos_) post_bos_ = *special(single.front());
    if (*post_add_eos_) post_eos_ = *special(single.back());
  }

  Status resolve_pre(const json& cfg) {
    std::optional<std::string> from_class;
    if (cfg.is_object() && cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string()) {
      const std::string c = cfg["tokenizer_class"].get<std::string>();
      if (c == "Qwen2Tokenizer" || c == "Qwen2TokenizerFast") from_class = "qwen2";
      if (c == "GPT2Tokenizer" || c == "GPT2TokenizerFast") from_class = "gpt2";
    }
    if (file_pre_ && !hint_.empty() && *file_pre_ != hint_) {
      return invalid_argument(fmt::format("{}: tokenizer.json's pre-tokenizer is '{}' but the hint says '{}'",
                                          dir_, *file_pre_, hint_));
    }
    if (file_pre_) v_.pre = *file_pre_;
    else if (!hint_.empty()) v_.pre = hint_;
    else if (from_class) v_.pre = *from_class;
    else {
      return invalid_argument(fmt::format(
          "{}: the tokenizer files do not say which pre-tokenizer to use; pass a hint (gpt2, qwen2, "
          "llama-bpe)", dir_));
    }
    v_.ignore_merges = ignore_merges_.value_or(v_.pre == "llama-bpe");
    return ok_status();
  }

  // Llama 3's encoder.json stops at 127999: with the llama-bpe hint and no token from 128000 on,
  // add Meta's 256 special tokens (see llama3_special).
  void add_llama3_specials() {
    if (hint_ != "llama-bpe") return;
    int64_t max_id = -1;
    for (const Entry& e : entries_) max_id = std::max(max_id, e.id);
    if (max_id != kLlama3FirstSpecial - 1) return;
    for (int32_t id = kLlama3FirstSpecial; id < kLlama3FirstSpecial + 256; ++id) {
      entries_.push_back({id, llama3_special(id), TokenType::kControl, "generated Llama 3 specials"});
    }
    llama3_generated_ = true;
  }

  // Entries → pieces/types by id: the same id twice must be the same text (the later entry, an
  // added token, sets the type); unassigned ids are empty kUnused tokens.
  Status lay_out() {
    if (entries_.empty()) return bad("has no tokens");
    std::stable_sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.id < b.id; });
    const int64_t n = entries_.back().id + 1;
    int64_t distinct = 0;
    for (size_t i = 0; i < entries_.size(); ++i) distinct += i == 0 || entries_[i].id != entries_[i - 1].id;
    if (n - distinct > kMaxIdGaps) {
      return bad(fmt::format("token ids go up to {} but only {} are assigned", n - 1, distinct));
    }
    v_.model = Vocab::Model::kBpe;
    v_.pieces.assign(size_t(n), std::string());
    v_.types.assign(size_t(n), TokenType::kUnused);
    v_.scores.assign(size_t(n), 0.f);
    std::vector<bool> set(size_t(n), false);
    for (Entry& e : entries_) {
      const auto i = size_t(e.id);
      if (set[i] && v_.pieces[i] != e.piece) {
        return bad(fmt::format("token {} is {} but {} says {}", e.id, shown(v_.pieces[i]), e.source,
                               shown(e.piece)));
      }
      if (!set[i]) v_.pieces[i] = std::move(e.piece);
      v_.types[i] = e.type;
      set[i] = true;
    }
    for (size_t i = 0; i < v_.pieces.size(); ++i) {
      if (!v_.pieces[i].empty()) id_of_.insert_or_assign(v_.pieces[i], int32_t(i));
    }
    v_.add_bos = false;
    v_.add_eos = false;
    v_.add_space_prefix = false;
    return ok_status();
  }

  // ------------------------------------------------------------------------------------------
  // tokenizer_config.json: special ids, flags, chat template
  // ------------------------------------------------------------------------------------------

  // A special-token field: a string, an object with a "content" string, or null (none).
  Result<std::optional<std::string>> token_text(const json& v, std::string_view key) const {
    if (v.is_null()) return std::optional<std::string>();
    if (v.is_string()) return std::optional<std::string>(v.get<std::string>());
    if (v.is_object() && v.contains("content") && v["content"].is_string()) {
      return std::optional<std::string>(v["content"].get<std::string>());
    }
    return bad(fmt::format("{} is neither a string, an object with a content, nor null", key));
  }

  Result<int32_t> id_of_text(const std::string& text, std::string_view key) const {
    auto it = id_of_.find(text);
    if (it == id_of_.end()) return bad(fmt::format("{} {} is not a token of the vocab", key, shown(text)));
    return it->second;
  }

  Status apply_config(const json& cfg) {
    const std::pair<const char*, int32_t*> ids[] = {
        {"bos_token", &v_.bos}, {"eos_token", &v_.eos}, {"unk_token", &v_.unk}, {"pad_token", &v_.pad}};
    for (const auto& [key, out] : ids) {
      if (!cfg.contains(key)) continue;
      KVB_ASSIGN_OR_RETURN(std::optional<std::string> text, token_text(cfg[key], key));
      if (text) {
        KVB_ASSIGN_OR_RETURN(*out, id_of_text(*text, key));
      } else {
        *out = -1;
      }
      config_set_.push_back(key);
    }
    const std::pair<const char*, bool*> flags[] = {{"add_bos_token", &v_.add_bos}, {"add_eos_token", &v_.add_eos}};
    for (const auto& [key, out] : flags) {
      if (!cfg.contains(key) || cfg[key].is_null()) continue;
      if (!cfg[key].is_boolean()) return bad(fmt::format("{} is not a boolean", key));
      *out = cfg[key].get<bool>();
      config_set_.push_back(key);
    }
    if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
      const json& t = cfg["chat_template"];
      if (t.is_string()) {
        v_.chat_template = t.get<std::string>();
      } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        for (const json& e : t) {
          if (!e.is_object() || !e.contains("template") || !e["template"].is_string()) {
            return bad("chat_template list entries must be objects with a template string");
          }
          if (v_.chat_template.empty() || e.value("name", std::string()) == "default") {
            v_.chat_template = e["template"].get<std::string>();
          }
        }
      } else {
        return bad("chat_template is neither a string nor a list of named templates");
      }
    }
    return ok_status();
  }

  bool config_set(std::string_view key) const {
    return std::find(config_set_.begin(), config_set_.end(), key) != config_set_.end();
  }

  // What the config did not say: tokenizer.json's post-processor and unk_token, then per family.
  Status apply_defaults(bool have_config) {
    file_ = dir_;
    auto lookup = [&](const std::string& text) -> int32_t {
      auto it = id_of_.find(text);
      return it == id_of_.end() ? -1 : it->second;
    };
    if (!config_set("add_bos_token") && post_add_bos_) v_.add_bos = *post_add_bos_;
    if (!config_set("add_eos_token") && post_add_eos_) v_.add_eos = *post_add_eos_;
    if (!config_set("bos_token") && !post_bos_.empty()) v_.bos = lookup(post_bos_);
    if (!config_set("eos_token") && !post_eos_.empty()) v_.eos = lookup(post_eos_);
    if (!config_set("unk_token") && !unk_text_.empty()) v_.unk = lookup(unk_text_);
    if (llama3_generated_) {
      if (!config_set("bos_token")) v_.bos = kLlama3Bos;
      if (!config_set("eos_token")) v_.eos = kLlama3Eos;
      if (!config_set("add_bos_token")) v_.add_bos = true;
    }
    // GPT-2's vocab.json holds <|endoftext|> as a plain entry; its tokenizer_config makes it
    // bos = eos = unk, a special token.
    if (!have_config && v_.pre == "gpt2") {
      const int32_t eot = lookup("<|endoftext|>");
      if (eot >= 0 && v_.types[size_t(eot)] == TokenType::kNormal) {
        v_.types[size_t(eot)] = TokenType::kControl;
        if (v_.bos < 0) v_.bos = eot;
        if (v_.eos < 0) v_.eos = eot;
      }
    }
    return ok_status();
  }

  std::string dir_;
  std::string hint_;
  std::string file_;  // the file being read
  Vocab v_;
  std::vector<Entry> entries_;
  std::optional<bool> ignore_merges_;
  std::optional<std::string> file_pre_;
  std::optional<bool> post_add_bos_, post_add_eos_;
  std::string post_bos_, post_eos_, unk_text_;
  bool llama3_generated_ = false;
  std::unordered_map<std::string, int32_t> id_of_;  // piece → id (a later duplicate wins)
  std::vector<std::string_view> config_set_;        // tokenizer_config.json keys that were present
};

}  // namespace

Result<Vocab> read_hf_vocab(const std::string& dir, std::string_view pre_hint) {
  HfReader r(dir, pre_hint);
  try {
    return r.read();
  } catch (const std::exception& e) {
    // nlohmann type errors on a field shaped unlike a tokenizer file's, or std::bad_alloc.
    return invalid_argument(fmt::format("{}: {}", r.current_file().empty() ? dir : r.current_file(), e.what()));
  }
}

}  // namespace kvb
