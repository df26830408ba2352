"""fifoq connectors: the runtime that calls actor handlers in order, and example connectors."""
from connectors.registry import OnInterrupted, Registry
from connectors.runtime import Runtime

__all__ = ["OnInterrupted", "Registry", "Runtime"]
