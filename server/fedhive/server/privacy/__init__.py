"""The coordinator's side of differential privacy."""
