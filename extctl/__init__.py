"""envoy-extkit's control side: the ``extctl`` CLI, Envoy config generation, the Envoy runner."""
