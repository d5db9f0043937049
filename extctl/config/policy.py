"""``Policy``: what both generators enforce around the extensions, in one vocabulary.

The same Policy gives the same behaviour from Envoy Gateway's resources (EnvoyExtensionPolicy
``failOpen``/``messageTimeout``, SecurityPolicy, BackendTrafficPolicy, ClientTrafficPolicy,
EnvoyProxy ``filterOrder``) and from the standalone Envoy config (ext_proc
``failure_mode_allow``/``message_timeout``, RBAC, hash policy, ``xff_num_trusted_hops``,
filter order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import ConfigError
from .filter_order import FilterPosition
from .net import parse_cidrs
from .session import SessionPersistence

DEFAULT_ACTIONS = ("Allow", "Deny")


@dataclass(frozen=True)
class Policy:
    fail_open: bool = field(default=False, metadata={
        "help": "Envoy continues without the processor when it is unreachable or fails."})
    message_timeout: float | None = field(default=None, metadata={
        "help": "Seconds Envoy waits per answer (default: the class's message_timeout)."})
    allow_cidrs: Sequence[str] = field(default=(), metadata={
        "help": "Only clients in these CIDRs get through (repeatable)."})
    deny_cidrs: Sequence[str] = field(default=(), metadata={
        "help": "Clients in these CIDRs get 403 (checked first; repeatable)."})
    default_action: str | None = field(default=None, metadata={
        "help": "Action for other clients (default: Deny with an allow list, else Allow)."})
    session: SessionPersistence | None = field(default=None, metadata={
        "help": "Session persistence: consistent hashing to the upstreams."})
    xff_trusted_hops: int = field(default=0, metadata={
        "help": "Client address: this many hops back in X-Forwarded-For."})
    filter_order: Sequence[FilterPosition] = field(default=(), metadata={
        "help": "Moves from Envoy Gateway's default filter order, applied in order."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_cidrs", parse_cidrs(self.allow_cidrs))
        object.__setattr__(self, "deny_cidrs", parse_cidrs(self.deny_cidrs))
        object.__setattr__(self, "filter_order", tuple(self.filter_order))
        if self.message_timeout is not None and not self.message_timeout > 0:
            raise ConfigError(f"message timeout {self.message_timeout}: give seconds > 0")
        if self.xff_trusted_hops < 0:
            raise ConfigError("X-Forwarded-For trusted hops must be 0 or more")
        if self.default_action is not None:
            if self.default_action not in DEFAULT_ACTIONS:
                raise ConfigError("the default action is Allow or Deny")
            if not (self.allow_cidrs or self.deny_cidrs):
                raise ConfigError("a default action needs CIDRs to allow or deny")

    @property
    def client_action(self) -> str:
        """What clients outside the CIDR lists get."""
        return self.default_action or ("Deny" if self.allow_cidrs else "Allow")
