"""Background runners of the core's rules inside the Serve graph (no HTTP)."""
