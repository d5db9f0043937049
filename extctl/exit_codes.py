"""Exit codes of ``extctl`` commands (documented in the README)."""

OK = 0
ERROR = 1  # an error not listed below; also: serve cut in-flight streams after a second signal
USAGE = 2  # bad options or arguments (click's own usage errors use 2 as well)
STARTUP = 3  # the server could not start: socket in use, address taken, on_startup failed
IMPORT = 4  # MODULE:CLASS could not be imported or is not a valid Processor
ENVOY = 5  # Envoy is missing, exited at start, or never became ready
