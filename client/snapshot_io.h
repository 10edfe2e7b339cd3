// Cache snapshot files at the message level: CacheChunk messages in, CacheChunk messages out.
//
// The format is kv_wire.proto's (the 8-byte magic "KVBCACHE", then each message as a little-endian
// u32 length and its serialized bytes; limit wire::kMaxSnapshotMessageBytes per message), the same
// bytes wire::write_snapshot writes and wire::read_snapshot reads. Those two go through a KvCache
// and need the model; the client has no model, so it moves the messages as they are and leaves
// every check of their contents to the agent that imports them.
// TODO(#3): the framing is written twice (here and proto/wire_convert.cpp); once wire_convert
// exposes a message-level reader/writer, these classes become thin wrappers or go away.
//
// Threading: one thread per object. Ownership: each object owns its file descriptor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/status.h"
#include "kvbridge/v1/kv_wire.pb.h"

namespace kvb::client {

// Writes a snapshot atomically: messages go to a temporary file beside `path` (mode 0600: a
// cache holds the text it was computed from); commit() syncs it and renames it onto `path`.
// Destroying an uncommitted writer removes the temporary file and leaves `path` untouched.
class SnapshotWriter {
 public:
  // NOT_FOUND / PERMISSION_DENIED / INTERNAL when the temporary file cannot be created.
  static Result<std::unique_ptr<SnapshotWriter>> create(const std::string& path);
  ~SnapshotWriter();
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  // INVALID_ARGUMENT for a message over the snapshot limit; file system errors as above.
  Status append(const ::kvbridge::v1::CacheChunk& msg);
  Status commit();

  uint64_t bytes_written() const { return bytes_; }

 private:
  SnapshotWriter(std::string path, std::string tmp, int fd) : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t bytes_ = 0;
  std::string scratch_;
};

// Reads a snapshot message by message (memory: one message).
class SnapshotReader {
 public:
  // NOT_FOUND for a missing file; INVALID_ARGUMENT for a bad magic.
  static Result<std::unique_ptr<SnapshotReader>> open(const std::string& path);
  ~SnapshotReader();
  SnapshotReader(const SnapshotReader&) = delete;
  SnapshotReader& operator=(const SnapshotReader&) = delete;

  // Fills `msg` and returns true, or returns false at the end of the file. INVALID_ARGUMENT for a
  // length over the limit or past the end of the file, or bytes that do not parse.
  Result<bool> next(::kvbridge::v1::CacheChunk& msg);

  uint64_t file_bytes() const { return size_; }

 private:
  SnapshotReader(std::string path, int fd, uint64_t size) : path_(std::move(path)), fd_(fd), size_(size) {}
  Status read_exact(char* dst, size_t n);
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0, offset_ = 0;
  std::string scratch_;
};

}  // namespace kvb::client
