"""Checks of running components: a processor's gRPC health (:mod:`.health`) and what a
running Envoy really has configured and loaded (:mod:`.doctor`)."""
