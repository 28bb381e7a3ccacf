"""Fluidity: a local HTTP proxy carried over one mTLS HTTP/2 connection to your server."""

__version__ = "0.1.0"
