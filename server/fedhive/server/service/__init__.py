"""The coordinator as a service: a queue of runs, standing nodes, the control plane."""
