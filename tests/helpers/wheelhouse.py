"""Wheels of the distributions installed in this environment, so a test can ``pip install``
into a new venv as a user does, without the network: pip is pointed at them
(``PIP_NO_INDEX``, ``PIP_FIND_LINKS``) and resolves, builds and installs as from an index.

Each wheel is repacked from the installed files its ``RECORD`` lists (inside site-packages:
scripts pip writes again from ``entry_points.txt``), with the tags of its ``WHEEL`` file and
a new ``RECORD``; editable installs are left out (their sources are elsewhere).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import sysconfig
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _installed() -> dict[str, metadata.Distribution]:
    """This environment's distributions (in site-packages: not the checkout's egg-info that
    the working directory on ``sys.path`` would show)."""
    paths = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    installed: dict[str, metadata.Distribution] = {}
    for distribution in metadata.distributions(path=paths):
        installed.setdefault(canonicalize_name(distribution.metadata["Name"]), distribution)
    return installed


def closure(requirements: Iterable[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively (extras and markers
    evaluated here), by canonical name."""
    installed = _installed()
    found: dict[str, metadata.Distribution] = {}
    pending = [(Requirement(text), "") for text in requirements]
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(
                {"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        extras = sorted(requirement.extras) or [""]
        if all((name, e) in seen for e in extras):
            continue
        seen.update((name, e) for e in extras)
        distribution = found[name] = installed[name]
        for text in distribution.requires or ():
            needed = Requirement(text)
            for wanted in extras:
                pending.append((needed, wanted))
    return found


def _editable(distribution: metadata.Distribution) -> bool:
    direct = json.loads(distribution.read_text("direct_url.json") or "{}")
    return bool(direct.get("dir_info", {}).get("editable"))


def repack(distribution: metadata.Distribution, into: Path) -> Path:
    """One installed distribution as a wheel in ``into``."""
    info = distribution.read_text("WHEEL")
    if info is None:
        raise RuntimeError(f"{distribution.metadata['Name']}: installed without a WHEEL file")
    tags = [line.split(":", 1)[1].strip() for line in info.splitlines()
            if line.startswith("Tag:")]
    python, abi, platform = ({tag.split("-")[i] for tag in tags} for i in range(3))
    tag = "-".join(".".join(sorted(part)) for part in (python, abi, platform))
    name = re.sub(r"[-_.]+", "_", distribution.metadata["Name"]).lower()
    wheel = into / f"{name}-{distribution.version}-{tag}.whl"
    site = Path(str(distribution.locate_file("")))
    rows: list[tuple[str, str, str]] = []
    record = ""
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for file in distribution.files or ():
            relative = file.as_posix()
            if relative.startswith("../") or "__pycache__" in file.parts:
                continue
            if file.parts[0].endswith(".dist-info") and file.parts[1:] == ("RECORD",):
                record = relative
                continue
            path = site / file
            if not path.is_file():
                continue
            data = path.read_bytes()
            archive.writestr(zipfile.ZipInfo.from_file(path, relative), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append((relative, f"sha256={digest.decode()}", str(len(data))))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([*rows, (record, "", "")])
        archive.writestr(record, text.getvalue())
    return wheel


def wheelhouse(into: Path, requirements: Iterable[str], leave_out: Iterable[str] = ()) -> Path:
    """Wheels of every installed distribution ``requirements`` need, but those named in
    ``leave_out`` (a test that checks where one comes from must not find it here) and
    editable ones."""
    into.mkdir(parents=True, exist_ok=True)
    skipped = {canonicalize_name(name) for name in leave_out}
    for name, distribution in closure(requirements).items():
        if name not in skipped and not _editable(distribution):
            repack(distribution, into)
    return into
