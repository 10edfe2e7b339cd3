// Client-side gRPC streams whose messages are parsed here, not by gRPC, so that a message that
// does not parse ends the call with an error instead of hanging it.
//
// Why: gRPC C++'s typed synchronous streams (grpc::ClientReader<T>::Read, ClientReaderWriter)
// return false when a message arrives that protobuf cannot parse — a proto3 `string` field that is
// not valid UTF-8, a truncated or hostile message — exactly as they do at the end of the stream.
// The caller then calls Finish(), which returns only once every incoming message has been read
// and the server's status has arrived; nobody reads the rest, so Finish() waits until the
// deadline, or forever without one. These wrappers receive raw grpc::ByteBuffers (which always
// "parse"), parse each into the caller's message, and on failure cancel the call and remember
// the error; finish() then drains what is left and returns INTERNAL naming the message type.
//
// Contracts shared by both classes:
//   - `ctx` is borrowed and must outlive the object; the deadline set on it (if any) bounds every
//     call below, which all block the calling thread.
//   - read() and write()/writes_done() may run on two different threads at once (as gRPC allows);
//     finish() once, after the reads and writes have stopped.
//   - finish() returns, in this order of precedence: the parse error (INTERNAL), else the call's
//     own status (the server's, CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, ...).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>

namespace kvb::rpc {

// "/<service full name>/<method>", e.g. method_path(AgentService::service_full_name(), "Generate").
std::string method_path(const char* service_full_name, const char* method);

// What both stream kinds share: parsing a received buffer and the error it left.
class StreamParser {
 public:
  explicit StreamParser(grpc::ClientContext& ctx) : ctx_(ctx) {}
  // Parses `buf` into `out` (cleared first). On failure: records INTERNAL, cancels the call,
  // returns false; later calls return false at once.
  bool parse(grpc::ByteBuffer& buf, google::protobuf::Message& out);
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // The parse error when there was one, else `finished`.
  grpc::Status status(grpc::Status finished) const;

 private:
  grpc::ClientContext& ctx_;
  std::atomic<bool> failed_{false};
  mutable std::mutex mu_;
  grpc::Status error_;  // guarded by mu_
};

// A server-streaming call (one request, a stream of responses).
class ParsedReader {
 public:
  // Starts `path` (method_path) with `request` on `channel`, which must outlive the object.
  ParsedReader(grpc::ChannelInterface& channel, std::string path, grpc::ClientContext& ctx,
               const google::protobuf::Message& request);
  // The next message: true; false at the end of the stream, when the call broke, or when a
  // message did not parse (finish() tells which).
  bool read(google::protobuf::Message& out);
  grpc::Status finish();

 private:
  std::string path_;  // the call's method name; gRPC borrows it
  StreamParser parser_;
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader_;
  grpc::ByteBuffer buf_;
};

// A bidirectional-streaming call.
class ParsedReaderWriter {
 public:
  ParsedReaderWriter(grpc::ChannelInterface& channel, std::string path, grpc::ClientContext& ctx);
  // false when the call has ended (finish() says why) or `msg` could not be serialized.
  bool write(const google::protobuf::Message& msg);
  bool writes_done() { return stream_->WritesDone(); }
  bool read(google::protobuf::Message& out);  // as ParsedReader::read
  grpc::Status finish();

 private:
  std::string path_;
  StreamParser parser_;
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream_;
  grpc::ByteBuffer in_;
};

}  // namespace kvb::rpc
