"""Shared core of fedhive, grouped by concern (wire, crypto, secagg, api, tasks, data, cli...)."""
