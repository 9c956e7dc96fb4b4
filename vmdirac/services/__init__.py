"""One module per RPC service."""
