"""Shared core of fedhive: config, tensor encoding, chunking, serde, errors."""
