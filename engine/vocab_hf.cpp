// Hugging Face tokenizer files → Vocab (placeholder until the BPE tokenizer lands).
#include "engine/vocab_loaders.h"

namespace kvb {

Result<Vocab> read_hf_vocab(const std::string& dir, std::string_view) {
  return unimplemented("read_hf_vocab(" + dir + "): Hugging Face tokenizers are not supported yet");
}

}  // namespace kvb
