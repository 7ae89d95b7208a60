"""Mixtera's gRPC server (``mixtera-server DB_DIR``) and the wire contract (mixtera.proto)."""
