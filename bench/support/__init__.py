"""What the bench scripts share, not run on its own: real data, small models, MiniLM, helpers, gRPC rows."""
