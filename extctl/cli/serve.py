"""``extctl serve``: a Processor subclass over gRPC for Envoy's ext_proc filter."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from . import options

# How each ServerConfig field is spelled on the command line; help and default come from the
# field itself.
_SPELLING: dict[str, dict[str, Any]] = {
    "uds": {"metavar": "PATH"},
    "address": {"metavar": "HOST:PORT"},
    "workers": {"type": click.IntRange(min=1)},
    "socket_mode": {"type": options.Octal()},
    "grace_period": {"type": click.FloatRange(min=0)},
    "max_message_bytes": {"type": click.IntRange(min=4096)},
    "tls_cert": {"type": click.Path(exists=True, dir_okay=False)},
    "tls_key": {"type": click.Path(exists=True, dir_okay=False)},
    "tls_client_ca": {"type": click.Path(exists=True, dir_okay=False)},
    "loop": {},
    "admin": {"metavar": "HOST:PORT"},
    "stall_timeout": {"type": click.FloatRange(min=0, min_open=True)},
    "transport": {},
}


def _server_options(function: Any) -> Any:
    """One option per :class:`extproc.ServerConfig` field."""
    from extproc import ServerConfig

    return options.field_options(ServerConfig, _SPELLING)(function)


@click.command()
@click.argument("processor", metavar="MODULE:CLASS")
@_server_options
@options.app_dir
@click.option("--reload", is_flag=True,
              help="For development: serve from a child process started anew when a Python "
                   "file under --app-dir (or --reload-dir) changes.")
@options.reload_dir
@options.log_level
@options.log_format
# extctl dev --reload's child records its streams there for the live view (which joins them
# with Envoy's access log).
@click.option("--view-records", type=click.Path(dir_okay=False), hidden=True)
def serve(processor: str, app_dir: str, reload: bool, reload_dir: tuple[str, ...],
          log_level: str, log_format: str, view_records: str | None, **settings: Any) -> None:
    """Serve a Processor subclass over gRPC for Envoy's ext_proc filter.

    SIGTERM, SIGHUP and SIGINT drain in-flight requests within --grace-period
    and exit 0 (a repeated SIGTERM is the same drain); a second SIGINT or a
    SIGQUIT cuts them and exits 1.

    \b
    Example:
      extctl serve app.processor:Redact --uds /var/run/extproc/extproc.sock
      extctl serve app.processor:Redact --address 127.0.0.1:9000 --workers 2
      extctl serve app.processor:Redact --uds /tmp/extproc.sock --transport pyvoy
      extctl serve app.processor:Redact --uds /tmp/extproc.sock --reload
    """
    import extproc

    from ..errors import UsageError

    options.setup_logging(log_level, log_format)
    try:
        config = extproc.ServerConfig(**settings)
    except extproc.ServeError as exc:
        raise exc.recast(UsageError) from None
    if reload:
        from ..harness.reload import serve_with_reload

        command = [processor, "--app-dir", os.path.abspath(app_dir), "--log-level", log_level,
                   "--log-format", log_format]
        for name, value in settings.items():
            if value is not None:
                text = f"{value:o}" if name == "socket_mode" else str(value)
                command += [f"--{name.replace('_', '-')}", text]
        sys.exit(serve_with_reload(command, reload_dir or [app_dir]))
    cls = options.load_processor(processor, app_dir)
    view = None
    if view_records is not None:
        from ..harness.view import recording

        view = recording(view_records)
    sys.exit(extproc.serve(cls, config, view=view))
