"""Seeing what runs: metrics, the metrics listener, ``fluidity status``,
progress lines and log setup."""
