// kvbridge-agent: one model behind gRPC, trading KV caches with other agents.
// Everything lives in the kvbridge::agent library; see agent/agent_server.h.
#include "agent/agent_server.h"

int main(int argc, char** argv) { return kvb::agent::agent_main(argc, argv); }
