"""Process-level helpers: usable CPUs, memory tuning, objects loaded by import path."""
