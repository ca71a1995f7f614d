"""Python client and command line for optiserve."""
