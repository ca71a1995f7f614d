"""Python client and command line for optiserve."""

from .client import OptiserveClient, OptiserveError

__all__ = ["OptiserveClient", "OptiserveError"]
