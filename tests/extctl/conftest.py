"""tests/extctl: the control side, by subpackage (config/, cli/, harness/); each folder's
conftest asks for what its tests need beyond the venv."""
