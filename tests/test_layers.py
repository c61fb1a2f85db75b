"""The layering rules of docs/architecture.md, read from the source: only the store
touches Zarr, only the sites layer registers hooks, only ``_util.progress_bar`` makes
progress bars (so ``--no-progress`` silences every one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import polysdk

ROOT = Path(polysdk.__file__).parent
SOURCES = sorted(ROOT.rglob("*.py"))

RULES = [
    ("zarr", re.compile(r"^\s*(import zarr|from zarr\b)", re.M), ("store/",)),
    ("hook registration", re.compile(
        r"\.register_(forward_hook|forward_pre_hook|full_backward_hook|full_backward_pre_hook)\("),
     ("sites/",)),
    ("tqdm", re.compile(r"^\s*(import tqdm|from tqdm\b)", re.M), ("_util.py",)),
]


def offenders(pattern: re.Pattern[str], allowed: tuple[str, ...]) -> list[str]:
    found = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(allowed) and pattern.search(path.read_text()):
            found.append(rel)
    return found


def test_the_scan_sees_the_package() -> None:
    assert len(SOURCES) > 50 and any(p.name == "_util.py" for p in SOURCES)
    # the patterns match where the code is allowed to be (so a miss is not a blind regex)
    for _, pattern, allowed in RULES:
        assert offenders(pattern, ("nowhere/",)), pattern.pattern


@pytest.mark.parametrize("what, pattern, allowed", RULES, ids=[r[0] for r in RULES])
def test_only_its_layer_uses_it(what: str, pattern: re.Pattern[str], allowed: tuple[str, ...]
                                ) -> None:
    assert offenders(pattern, allowed) == [], f"{what} outside {allowed}"
