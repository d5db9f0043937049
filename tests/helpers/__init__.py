"""Helpers the tests share: processors started by name (``tests.helpers.procs:Name``), the real
registry and its test CA (``oci``), hostile servers, CRD validation, patched Envoy configs, HTTP
peers, the WAT modules (``wat/``) and small helpers every folder uses (``common``)."""
