#include "rpc/parsed_stream.h"

#include <fmt/format.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>

namespace kvb::rpc {

std::string method_path(const char* service_full_name, const char* method) {
  return fmt::format("/{}/{}", service_full_name, method);
}

namespace {

// The message's wire bytes as gRPC sends them; false when protobuf cannot serialize it.
bool serialize(const google::protobuf::Message& msg, grpc::ByteBuffer& out) {
  bool own_buffer = false;
  return grpc::SerializationTraits<google::protobuf::Message>::Serialize(msg, &out, &own_buffer).ok();
}

}  // namespace

bool StreamParser::parse(grpc::ByteBuffer& buf, google::protobuf::Message& out) {
  if (failed()) return false;
  out.Clear();
  grpc::ProtoBufferReader in(&buf);
  if (out.ParseFromZeroCopyStream(&in)) return true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = grpc::Status(grpc::StatusCode::INTERNAL,
                          fmt::format("received a {} of {} bytes that does not parse (malformed, or a string field "
                                      "that is not valid UTF-8); the call was cancelled",
                                      out.GetTypeName(), buf.Length()));
  }
  failed_.store(true, std::memory_order_release);
  ctx_.TryCancel();
  return false;
}

grpc::Status StreamParser::status(grpc::Status finished) const {
  if (!failed()) return finished;
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

// The generated stubs build their streams with these same factories (kvbridge.v1's *.grpc.pb.cc);
// with grpc::ByteBuffer as the message type gRPC hands over the bytes unparsed.
ParsedReader::ParsedReader(grpc::ChannelInterface& channel, std::string path, grpc::ClientContext& ctx,
                           const google::protobuf::Message& request)
    : path_(std::move(path)), parser_(ctx) {
  const grpc::internal::RpcMethod method(path_.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING);
  grpc::ByteBuffer req;
  if (!serialize(request, req)) ctx.TryCancel();  // sends nothing useful; finish() says CANCELLED
  reader_.reset(grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(&channel, method, &ctx, req));
}

bool ParsedReader::read(google::protobuf::Message& out) {
  return !parser_.failed() && reader_->Read(&buf_) && parser_.parse(buf_, out);
}

grpc::Status ParsedReader::finish() {
  if (parser_.failed()) {
    while (reader_->Read(&buf_)) {  // cancelled: ends at once; Finish() needs the stream drained
    }
  }
  return parser_.status(reader_->Finish());
}

ParsedReaderWriter::ParsedReaderWriter(grpc::ChannelInterface& channel, std::string path, grpc::ClientContext& ctx)
    : path_(std::move(path)), parser_(ctx) {
  const grpc::internal::RpcMethod method(path_.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING);
  stream_.reset(grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(&channel, method,
                                                                                                     &ctx));
}

bool ParsedReaderWriter::write(const google::protobuf::Message& msg) {
  grpc::ByteBuffer out;
  return serialize(msg, out) && stream_->Write(out);
}

bool ParsedReaderWriter::read(google::protobuf::Message& out) {
  return !parser_.failed() && stream_->Read(&in_) && parser_.parse(in_, out);
}

grpc::Status ParsedReaderWriter::finish() {
  if (parser_.failed()) {
    while (stream_->Read(&in_)) {
    }
  }
  return parser_.status(stream_->Finish());
}

}  // namespace kvb::rpc
