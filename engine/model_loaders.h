// Internal to engine/: one loader per file format, and the storage they fill. Not installed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/mmap_file.h"
#include "engine/model.h"
#include "engine/safetensors.h"

namespace kvb {

struct Model::Storage {
  std::unique_ptr<GgufFile> gguf;          // GGUF: tensors point into its mapping
  std::vector<SafetensorsFile> safetensors;  // Hugging Face: tensors point into these mappings
  MappedFile file;                         // llama2.c: tensors point into this mapping
  std::vector<std::vector<float>> owned;   // tensors a loader had to convert (e.g. f16 norms)
  std::vector<std::vector<uint8_t>> owned_bytes;  // raw tensors of any dtype (synthetic models)
};

// Loads a GGUF model (arch llama, qwen2, qwen3). The file must already be known to be GGUF.
Result<std::unique_ptr<Model>> load_gguf_model(const std::string& path, const LoadOptions& opt);
// Loads a llama2.c version-0 checkpoint; the tokenizer comes from opt.tokenizer_path, or
// tokenizer.bin beside the model when that exists.
Result<std::unique_ptr<Model>> load_llama2c_model(const std::string& path, const LoadOptions& opt);
// Loads a Hugging Face model directory (engine/weights_hf.cpp). opt.tokenizer_path is ignored.
Result<std::unique_ptr<Model>> load_hf_model(const std::string& dir, const LoadOptions& opt);

// One file format's names of a block's tensors; "{}" stands for the layer index.
struct LayerTensorNames {
  const char* attn_norm;
  const char* wq;
  const char* wk;
  const char* wv;
  const char* bq;  // kQwen2 biases
  const char* bk;
  const char* bv;
  const char* q_norm;  // kQwen3 head norms
  const char* k_norm;
  const char* wo;
  const char* ffn_norm;
  const char* w_gate;
  const char* w_up;
  const char* w_down;
};
// A format's accessors: a matrix [rows][cols] or a vector [n] by name (the loader checks dtype and
// shape and names the tensor in its error).
using MatrixLoader = std::function<Result<Tensor>(const std::string& name, int64_t rows, int64_t cols)>;
using VectorLoader = std::function<Result<Tensor>(const std::string& name, int64_t n)>;
// Fills w.layers[0..n_layer) with the tensors config `c`'s arch has, by `names`.
Status load_layer_tensors(const ModelConfig& c, const LayerTensorNames& names, const MatrixLoader& matrix,
                          const VectorLoader& vector, ModelWeights& w);

// Builds the tokenizer of a loaded vocab into m.tokenizer. A vocab or tokenizer kvbridge cannot
// build (UNIMPLEMENTED, NOT_FOUND) leaves m.tokenizer null and says why in m.tokenizer_note; other
// errors are returned. `vocab` is the loader's result.
Status attach_tokenizer(Model& m, Result<Vocab> vocab);

}  // namespace kvb
