"""Seeing what runs: metrics, the bounded history and the dashboard page drawn from
them, the metrics listener, ``fluidity status``, progress lines and log setup."""
