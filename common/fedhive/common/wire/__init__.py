"""Where bytes cross the wire: tensors as dtype + shape + raw bytes, chunk streams, the domain
types of the wire contract, and serde (the only code that touches fedhive.proto)."""
