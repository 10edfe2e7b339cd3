// Synthetic vocabularies (engine/synth.h): the SentencePiece one of the stories presets, the
// byte-level BPE ones of the Qwen and Llama 3 families, and their Hugging Face tokenizer files.
#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "engine/synth.h"

namespace kvb {

namespace {

constexpr int32_t kMinSynthVocab = 3 + 256 + 1;  // specials, bytes, at least one normal piece

// Short chat templates of each family (the family's markers, so engine/chat_template.h recognizes
// them: ChatML for Qwen, Llama 3's header/eot layout). Real checkpoints ship longer ones.
constexpr const char* kChatMLTemplate =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
constexpr const char* kLlama3Template =
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

struct FamilySpecials {
  std::vector<std::string> tokens;  // at the end of the vocab, in this order
  int bos = -1, eos = -1, pad = -1;  // indices into tokens
  bool add_bos = false;
  const char* pre = "";
  const char* chat_template = "";
  bool ignore_merges = false;
};

FamilySpecials family_specials(SynthVocabKind kind) {
  if (kind == SynthVocabKind::kQwen) {
    return {{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, -1, 2, 0, false, "qwen2", kChatMLTemplate, false};
  }
  return {{"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
          0, 4, -1, true, "llama-bpe", kLlama3Template, true};
}

// UTF-8 of one code point (< 0x800 here).
std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// GPT-2's bytes_to_unicode, as the list of (byte, code point) in its vocab order.
std::vector<std::pair<int, uint32_t>> byte_symbols() {
  std::vector<std::pair<int, uint32_t>> out;
  std::vector<bool> printable(256, false);
  auto range = [&](int lo, int hi) {
    for (int b = lo; b <= hi; ++b) printable[size_t(b)] = true, out.emplace_back(b, uint32_t(b));
  };
  range('!', '~');
  range(0xA1, 0xAC);
  range(0xAE, 0xFF);
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    if (!printable[size_t(b)]) out.emplace_back(b, next++);
  }
  return out;
}

}  // namespace

int32_t synth_min_vocab(SynthVocabKind kind) {
  if (kind == SynthVocabKind::kSpm) return kMinSynthVocab;
  return 256 + int32_t(family_specials(kind).tokens.size()) + 1;
}

Vocab synth_vocab(int32_t n_vocab) {
  KVB_ASSERT(n_vocab >= kMinSynthVocab, "synth vocab too small");
  Vocab v;
  v.model = Vocab::Model::kSpm;
  v.spm_flavor = Vocab::SpmFlavor::kLlamaCpp;
  v.pieces.reserve(size_t(n_vocab));
  auto add = [&v](std::string piece, float score, TokenType type) {
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0.0f, TokenType::kUnknown);
  add("<s>", 0.0f, TokenType::kControl);
  add("</s>", 0.0f, TokenType::kControl);
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0.0f, TokenType::kByte);
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  const std::unordered_set<std::string> taken(v.pieces.begin(), v.pieces.end());

  // Alphabet: "▁", letters, digits, then the other printable ASCII characters.
  std::vector<std::string> alphabet{"\xE2\x96\x81"};
  for (char ch = 'a'; ch <= 'z'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = 'A'; ch <= 'Z'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = '0'; ch <= '9'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = '!'; ch <= '~'; ++ch) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) alphabet.emplace_back(1, ch);
  }
  // Every string of length 1, then 2, ...: an odometer over alphabet indices.
  float score = -1.0f;
  for (size_t len = 1; v.n_vocab() < n_vocab; ++len) {
    std::vector<size_t> idx(len, 0);
    while (v.n_vocab() < n_vocab) {
      std::string piece;
      for (size_t i : idx) piece += alphabet[i];
      if (!taken.count(piece)) {
        add(std::move(piece), score, TokenType::kNormal);
        score -= 1.0f;
      }
      size_t pos = len;
      while (pos > 0 && ++idx[pos - 1] == alphabet.size()) idx[--pos] = 0;
      if (pos == 0) break;  // all strings of this length done
    }
  }
  return v;
}


Vocab synth_bpe_vocab(int32_t n_vocab, SynthVocabKind kind) {
  KVB_ASSERT(kind != SynthVocabKind::kSpm && n_vocab >= synth_min_vocab(kind), "synth BPE vocab too small");
  const FamilySpecials fam = family_specials(kind);
  const int32_t n_regular = n_vocab - int32_t(fam.tokens.size());
  Vocab v;
  v.model = Vocab::Model::kBpe;
  v.pre = fam.pre;
  v.ignore_merges = fam.ignore_merges;
  v.chat_template = fam.chat_template;
  v.add_bos = fam.add_bos;
  v.add_eos = false;
  v.add_space_prefix = false;
  v.pieces.reserve(size_t(n_vocab));
  for (const auto& [byte, cp] : byte_symbols()) v.pieces.push_back(utf8(cp));
  // Alphabet: "Ġ" (the space's symbol), letters, digits, then the other printable ASCII characters.
  std::vector<std::string> alphabet{utf8(0x120)};
  for (char ch = 'a'; ch <= 'z'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = 'A'; ch <= 'Z'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = '0'; ch <= '9'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = '!'; ch <= '~'; ++ch) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) alphabet.emplace_back(1, ch);
  }
  // Every string of 2, then 3, ... characters (an odometer over alphabet indices); each is the
  // merge of its first k-1 characters (a piece of the previous length) and its last one.
  for (size_t len = 2; int32_t(v.pieces.size()) < n_regular; ++len) {
    std::vector<size_t> idx(len, 0);
    while (int32_t(v.pieces.size()) < n_regular) {
      std::string prefix;
      for (size_t i = 0; i + 1 < len; ++i) prefix += alphabet[idx[i]];
      const std::string& last = alphabet[idx[len - 1]];
      v.merges.push_back(prefix + " " + last);
      v.pieces.push_back(prefix + last);
      size_t pos = len;
      while (pos > 0 && ++idx[pos - 1] == alphabet.size()) idx[--pos] = 0;
      if (pos == 0) break;  // all strings of this length done
    }
  }
  v.types.assign(v.pieces.size(), TokenType::kNormal);
  for (const std::string& t : fam.tokens) {
    v.pieces.push_back(t);
    v.types.push_back(TokenType::kControl);
  }
  v.scores.assign(v.pieces.size(), 0.0f);
  const auto special = [&](int i) { return i < 0 ? -1 : n_regular + i; };
  v.bos = special(fam.bos);
  v.eos = special(fam.eos);
  v.pad = special(fam.pad);
  return v;
}

Vocab synth_shape_vocab(const SynthShape& shape) {
  if (shape.vocab == SynthVocabKind::kSpm) return synth_vocab(shape.config.n_vocab);
  return synth_bpe_vocab(shape.config.n_vocab, shape.vocab);
}

Status write_hf_tokenizer_files(const Vocab& v, const std::string& dir) {
  if (v.model != Vocab::Model::kBpe) {
    return invalid_argument("write_hf_tokenizer_files: only byte-level BPE vocabs have vocab.json + merges.txt");
  }
  namespace fs = std::filesystem;
  using ojson = nlohmann::ordered_json;
  auto write = [&dir](const std::string& name, const std::string& text) -> Status {
    const fs::path p = fs::path(dir) / name;
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) return unavailable(fmt::format("cannot write {}: {}", p.string(), std::strerror(errno)));
    return Status::Ok();
  };
  ojson vocab = ojson::object();
  ojson added = ojson::object();
  for (int32_t id = 0; id < v.n_vocab(); ++id) {
    const std::string& piece = v.pieces[size_t(id)];
    if (v.types[size_t(id)] == TokenType::kControl || v.types[size_t(id)] == TokenType::kUserDefined) {
      added[std::to_string(id)] = {{"content", piece},    {"lstrip", false},      {"normalized", false},
                                   {"rstrip", false},     {"single_word", false},
                                   {"special", v.types[size_t(id)] == TokenType::kControl}};
    } else {
      vocab[piece] = id;
    }
  }
  std::string merges = "#version: 0.2\n";
  for (const std::string& m : v.merges) merges += m + "\n";
  const auto token = [&v](int32_t id) { return id >= 0 ? ojson(v.pieces[size_t(id)]) : ojson(nullptr); };
  ojson cfg = {
      {"add_bos_token", v.add_bos},
      {"add_eos_token", v.add_eos},
      {"add_prefix_space", false},
      {"added_tokens_decoder", added},
      {"bos_token", token(v.bos)},
      {"eos_token", token(v.eos)},
      {"pad_token", token(v.pad)},
      {"unk_token", token(v.unk)},
      {"chat_template", v.chat_template},
      {"clean_up_tokenization_spaces", false},
      {"errors", "replace"},
      {"model_max_length", 131072},
      {"tokenizer_class", v.pre == "qwen2" ? "Qwen2Tokenizer" : "GPT2Tokenizer"},
  };
  KVB_RETURN_IF_ERROR(write("vocab.json", vocab.dump()));
  KVB_RETURN_IF_ERROR(write("merges.txt", merges));
  return write("tokenizer_config.json", cfg.dump(2));
}

}  // namespace kvb
