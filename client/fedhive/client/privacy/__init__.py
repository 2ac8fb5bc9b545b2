"""The node's side of differential privacy (one module per level)."""
