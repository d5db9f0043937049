"""tests/registry: the OCI client against the real registry (Debian's docker-registry, TLS from
a test CA made with openssl), checked with skopeo, and against hostile servers."""

from tests.helpers.registry_fixtures import registry, test_ca
from tests.helpers.requirements import require

__all__ = ["registry", "test_ca"]

pytest_collection_modifyitems = require(__file__, "/usr/bin/docker-registry", "skopeo",
                                        "openssl")
