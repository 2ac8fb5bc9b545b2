"""fedhive node runtime: dials out to the coordinator, trains the shared model on local data."""
