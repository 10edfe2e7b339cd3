// PeerWarmer: keeps this agent's links to the peers it is told about (--peers) ready before a
// request needs them — the channel connected and the peer's TransportInfo (GetInfo) remembered —
// so that the first pull from a peer costs what the following ones do (issue #16: first contact).
//
// One thread: every peer is warmed at start, retried every second until it answers (a peer that
// starts later is picked up), then refreshed every kPeerInfoTtl / 2 so that a pull never has to
// ask GetInfo itself. Failures are logged once per outage and never affect requests: a pull from a
// peer that is not warm simply connects and asks, as without --peers.
//
// Threading: the constructor starts the thread; stop() (and the destructor) ends it, waiting at
// most for one connection attempt (2 s) or one GetInfo. Borrows the PeerClient, which must outlive
// it (stop it before stopping the PeerClient).
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/transfer/peer_client.h"

namespace kvb::agent {

class PeerWarmer {
 public:
  PeerWarmer(PeerClient& client, std::vector<std::string> peers);
  ~PeerWarmer();
  PeerWarmer(const PeerWarmer&) = delete;
  PeerWarmer& operator=(const PeerWarmer&) = delete;

  void stop();

 private:
  void run();
  // Connects and refreshes the peer's TransportInfo; false when it is not reachable now.
  bool warm(const std::string& peer, runtime::CancelToken& cancel);

  PeerClient& client_;
  const std::vector<std::string> peers_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  runtime::CancelToken cancel_;  // fired by stop(): interrupts a GetInfo in flight
  std::thread thread_;
};

}  // namespace kvb::agent
