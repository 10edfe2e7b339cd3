// kvbridge-fuser: one C2C fuser behind gRPC (kvbridge.v1.FuserService).
// Everything lives in the kvbridge::fuser_server library; see fuser/service/fuser_server.h.
#include "fuser/service/fuser_server.h"

int main(int argc, char** argv) { return kvb::fuser::fuser_main(argc, argv); }
