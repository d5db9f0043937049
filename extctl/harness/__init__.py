"""Running a real Envoy locally: the runner (``envoy``), an echo upstream (``echo``), a
processor + Envoy stack for tests (``stack``, re-exported as :mod:`extctl.testing`), the
``extctl dev`` stack (``dev``) and its bundled demo processor (``demo``)."""
