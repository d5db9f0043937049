"""envoy-extkit's control side: the ``extctl`` CLI, Envoy config generation, the Envoy runner."""

__version__ = "0.1.0"
