"""The coordinator's read-only status page and Prometheus metrics (off by default: ``[status]``)."""
