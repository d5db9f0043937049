"""Where the running envoy-extkit was installed from, so that a generated project installs it
from the same place on this machine before envoy-extkit is on the user's package index.

Read from the installed distribution's PEP 610 ``direct_url.json``: none means a package index;
otherwise a local directory (a checkout, editable or not), an archive (a wheel or sdist, local
or at a URL) or a VCS URL. envoy-extkit run from a checkout that is not the installed one (on
``PYTHONPATH``) is that checkout.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

DISTRIBUTION = "envoy-extkit"
KINDS = ("index", "directory", "archive", "vcs")


@dataclass(frozen=True)
class ExtkitSource:
    kind: str
    """One of :data:`KINDS`."""
    location: str = ""
    """A local path (directory, local archive) or a PEP 508 direct reference (a remote
    archive or a VCS URL, ``envoy-extkit @ ...``); empty for an index."""
    editable: bool = False

    @classmethod
    def running(cls) -> ExtkitSource:
        """The source of the envoy-extkit this code is part of."""
        checkout = _checkout_of_this_code()
        try:
            text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
        except metadata.PackageNotFoundError:
            text = None
        try:
            found = cls.from_direct_url(json.loads(text) if text else None)
        except (ValueError, TypeError, AttributeError):  # unreadable: ask the index
            found = cls("index")
        if checkout is not None and not (
                found.kind == "directory" and Path(found.location).resolve() == checkout):
            return cls("directory", str(checkout), editable=True)
        return found

    @classmethod
    def from_direct_url(cls, data: dict[str, Any] | None) -> ExtkitSource:
        """From the parsed ``direct_url.json`` (None: installed from an index)."""
        if data is None:
            return cls("index")
        url = str(data["url"])
        subdirectory = str(data.get("subdirectory") or "")
        if "vcs_info" in data:
            vcs = data["vcs_info"]
            reference = f"{vcs['vcs']}+{url}@{vcs['commit_id']}"
            if subdirectory:
                reference += f"#subdirectory={subdirectory}"
            return cls("vcs", f"{DISTRIBUTION} @ {reference}")
        local = url.startswith("file:")
        path = unquote(urlsplit(url).path) if local else ""
        if "dir_info" in data:
            if subdirectory:
                path = str(Path(path) / subdirectory)
            return cls("directory", path, editable=bool(data["dir_info"].get("editable")))
        if "archive_info" in data:
            if local:
                return cls("archive", path)
            info = data["archive_info"]
            digest = (info.get("hashes") or {}).get("sha256") or \
                str(info.get("hash") or "").removeprefix("sha256=")
            fragment = f"#sha256={digest}" if re.fullmatch(r"[0-9a-f]{64}", digest) else ""
            return cls("archive", f"{DISTRIBUTION} @ {url}{fragment}")
        raise ValueError("direct_url.json has no dir_info, archive_info or vcs_info")

    @property
    def pip_arguments(self) -> str:
        """What ``pip install`` is given besides the project, as shell words ("" for an
        index)."""
        if self.kind == "index":
            return ""
        return ("-e " if self.editable else "") + shlex.quote(self.location)

    @property
    def missing(self) -> bool:
        """A local source that is no longer there (the install command would fail)."""
        local = self.kind == "directory" or (self.kind == "archive"
                                             and not self.location.startswith(DISTRIBUTION))
        return local and not Path(self.location).exists()

    def describe(self, version: str) -> str:
        """The README's paragraph: where envoy-extkit comes from, and how to take it from an
        index instead."""
        if self.kind == "index":
            text = (f"Where envoy-extkit comes from: your package index (pyproject.toml asks "
                    f"for `envoy-extkit>={version}`), as for the envoy-extkit that made this "
                    "project.")
        else:
            where = (f"the checkout `{self.location}`" if self.kind == "directory"
                     else f"`{self.location}`")
            editable = ", editable" if self.editable else ""
            follows = ", which follows changes to that checkout" if self.editable else ""
            text = (f"Where envoy-extkit comes from: the envoy-extkit ({version}) that made this "
                    f"project was installed from {where}{editable}, so the install command "
                    f"above takes it from there: `{self.pip_arguments}`{follows}. Once "
                    "envoy-extkit is on your package index, drop that argument: pyproject.toml "
                    f"asks for `envoy-extkit>={version}`, which the index then serves.")
        # Lines break between words, never inside a `code span` (a command to copy).
        spans = re.sub(r"`[^`]*`", lambda m: m.group().replace(" ", "\0"), text)
        return textwrap.fill(spans, width=95, break_long_words=False,
                             break_on_hyphens=False).replace("\0", " ")

    @property
    def wheel_hint(self) -> str:
        """Where an image build finds envoy-extkit (the project's ``wheels/`` or the index)."""
        if self.kind == "index":
            return "the index has it"
        return (f"while the index does not have it, put it there with\n  `pip wheel --no-deps "
                f"-w wheels {shlex.quote(self.location)}`")

def _checkout_of_this_code() -> Path | None:
    """The envoy-extkit checkout this module runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(rf'^name = "{DISTRIBUTION}"$', pyproject.read_text(),
                                         re.MULTILINE):
        return root
    return None
