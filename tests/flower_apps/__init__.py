"""Flower apps written as Flower's documentation writes them (flwr 1.41), never adapted to fedhive.

``task.py`` (model, data, train/test), ``client_app.py`` (Message API ClientApp),
``numpy_client.py`` (the legacy NumPyClient + client_fn) and ``server_app.py`` (ServerApp + FedAvg,
used only to run the app under Flower itself) follow the layout of ``flwr new``'s PyTorch
template, with scikit-learn's bundled digits instead of a downloaded dataset. ruff skips them.
"""
