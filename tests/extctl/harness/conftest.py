"""tests/extctl/harness: what runs a real Envoy for users' tests (compare_with_envoy, the pytest
plugin); nothing beyond the venv."""
