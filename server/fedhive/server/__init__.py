"""fedhive coordinator: gRPC service, round engine, FedAvg, run directory."""
