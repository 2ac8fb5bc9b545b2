"""The consortium's public-key infrastructure: CA, certificates, CRL, identity keys."""
