"""Fluidity: an HTTP proxy on the laptop, carried over one mTLS HTTP/2 connection to a server in the cloud."""

__version__ = "0.1.0"
