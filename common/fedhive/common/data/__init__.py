"""Data on disk: labelled data sets, their partitioning across nodes, safetensors model files."""
