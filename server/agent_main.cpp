// kvbridge-agent: one model behind gRPC, trading KV caches with other agents.
// Everything lives in the kvbridge::server library; see server/agent_server.h.
#include "server/agent_server.h"

int main(int argc, char** argv) { return kvb::server::agent_main(argc, argv); }
