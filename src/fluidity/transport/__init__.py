"""Asyncio drivers of one tunnel: TLS contexts and the acceptor, the HTTP/2
connection driver, splicing, the WebSocket link over TLS-in-memory, and the
front door that tells the two transports apart by ALPN."""
