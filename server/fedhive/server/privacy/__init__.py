"""The coordinator's side of differential privacy (one module per level)."""
