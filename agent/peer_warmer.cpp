#include "agent/peer_warmer.h"

#include <chrono>

#include "rpc/logging.h"

namespace kvb::agent {

namespace {
constexpr auto kConnectTimeout = std::chrono::seconds(2);
constexpr auto kRetry = std::chrono::seconds(1);
}  // namespace

PeerWarmer::PeerWarmer(PeerClient& client, std::vector<std::string> peers)
    : client_(client), peers_(std::move(peers)) {
  if (!peers_.empty()) thread_ = std::thread([this] { run(); });
}

PeerWarmer::~PeerWarmer() { stop(); }

void PeerWarmer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cancel_.cancel();
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool PeerWarmer::warm(const std::string& peer, runtime::CancelToken& cancel) {
  const auto channel = client_.channel(peer);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + kConnectTimeout)) return false;
  return client_.fetch_endpoint(peer, cancel).ok();
}

void PeerWarmer::run() {
  using Clock = std::chrono::steady_clock;
  std::vector<Clock::time_point> due(peers_.size(), Clock::now());
  std::vector<bool> up(peers_.size(), false), reported(peers_.size(), false);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    for (size_t i = 0; i < peers_.size() && !stop_; ++i) {
      if (Clock::now() < due[i]) continue;
      lock.unlock();
      const bool ok = warm(peers_[i], cancel_);
      lock.lock();
      due[i] = Clock::now() + (ok ? std::chrono::duration_cast<Clock::duration>(kPeerInfoTtl / 2) : kRetry);
      if (ok != up[i] || !reported[i]) {
        rpc::log_event(ok ? spdlog::level::info : spdlog::level::warn, ok ? "peer ready" : "peer not reachable yet",
                       {{"peer", peers_[i]}});
        reported[i] = true;
      }
      up[i] = ok;
    }
    cv_.wait_for(lock, kRetry, [&] { return stop_; });
  }
}

}  // namespace kvb::agent
