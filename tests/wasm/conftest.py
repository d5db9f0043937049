"""tests/wasm: the emulator, alone and against a real Envoy, with the templates' filters (the
AssemblyScript one builds with Node.js and npm)."""

from tests.helpers.requirements import require
from tests.helpers.templates import as_template_module, wat_template_module

__all__ = ["as_template_module", "wat_template_module"]

pytest_collection_modifyitems = require(__file__, "node", "npm")
