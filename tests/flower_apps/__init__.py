"""Flower apps written as Flower's documentation writes them (flwr 1.41), never adapted to fedhive.

``task.py`` (model, data, train/test), ``client_app.py`` (Message API ClientApp),
``numpy_client.py`` (the legacy NumPyClient + client_fn) and ``server_app.py`` (ServerApp + FedAvg,
used only to run the app under Flower itself: it seeds the initial Net with the run config's
``seed`` and saves the final model and FedAvg's aggregated metrics to its ``final-model`` path)
follow the layout of ``flwr new``'s PyTorch template, with scikit-learn's bundled digits instead
of a downloaded dataset. ``project/pyproject.toml`` is the app project ``flwr run`` submits to a
SuperLink (tests/integration/flower_runtime.py). ruff skips them.
"""
