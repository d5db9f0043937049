"""tests/extctl/config: the generated Envoy and Envoy Gateway configs, and the sidecar run for
real: a processor over TLS from a test CA (openssl), real users sharing a socket (root), the
window before a socket's mode is set (strace)."""

from tests.helpers.registry_fixtures import test_ca
from tests.helpers.requirements import require
from tests.helpers.users import shared, users

__all__ = ["shared", "test_ca", "users"]

pytest_collection_modifyitems = require(__file__, "openssl", "strace")
