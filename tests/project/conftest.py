"""tests/project: the project as a whole (structure, README, the documentation site, examples,
templates, public names); the Wasm example goes through the real registry (docker-registry, a
test CA made with openssl), the AssemblyScript template builds with Node.js and npm, and the
site is checked in a headless Chromium."""

from tests.helpers.registry_fixtures import registry, test_ca
from tests.helpers.requirements import require
from tests.helpers.templates import wat_template_module

__all__ = ["registry", "test_ca", "wat_template_module"]

pytest_collection_modifyitems = require(__file__, "/usr/bin/docker-registry", "openssl",
                                        "node", "npm", "chromium")
