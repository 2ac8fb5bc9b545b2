"""Built-in tasks: ``digits`` (the quickstart CNN) and ``constant`` (benchmarks and tests)."""
