"""An index page of the study runs under a folder (``polysdk index FOLDER``).

    from polysdk.reporting.index import find_runs, write_index
    write_index("runs")            # runs/index.html: one row per run folder, linked

A run folder is one holding ``results.zarr`` with a study record (what
:meth:`polysdk.studies.Study.run` writes). Each row gives the study, preset and scale,
how many of its units are stored, whether it finished (``config.json`` is written last)
and a relative link to its report.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

from polysdk.reporting.page import STYLE

__all__ = ["find_runs", "write_index"]


def _run_info(folder: Path) -> dict[str, Any] | None:
    root = folder / "results.zarr" / "zarr.json"
    if not root.exists():
        return None
    try:
        doc = json.loads(root.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    attrs = doc.get("attributes", {})
    if "study_record" not in attrs:
        return None
    record = json.loads(attrs["study_record"])
    units = [u["name"] for u in json.loads(attrs.get("study_units", "[]"))]
    meta = (doc.get("consolidated_metadata") or {}).get("metadata", {})
    stored = {p[len("results/"):] for p, m in meta.items()
              if p.startswith("results/") and "polysdk_result" in m.get("attributes", {})}
    report = folder / "report.html"
    return {"folder": folder, "study": record.get("study", "?"),
            "preset": record.get("preset") or "custom",
            "scale": "quick" if record.get("quick") else "full",
            "units": f"{sum(u in stored for u in units)}/{len(units)}",
            "finished": (folder / "config.json").exists(),
            "report": report if report.exists() else None,
            "modified": _dt.datetime.fromtimestamp(root.stat().st_mtime)}


def find_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every run folder under ``folder`` (itself included), sorted by path."""
    folder = Path(folder)
    found = [_run_info(p.parent.parent) for p in folder.rglob("results.zarr/zarr.json")]
    return sorted((r for r in found if r is not None), key=lambda r: str(r["folder"]))


def write_index(folder: str | Path, path: str | Path | None = None) -> Path:
    """Write ``<folder>/index.html`` (or ``path``) listing the runs; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        from polysdk.errors import ConfigError

        raise ConfigError(f"{str(folder)!r} is not a folder; pass the folder that holds "
                          "your run folders (e.g. runs).")
    path = Path(path) if path is not None else folder / "index.html"
    esc = html.escape
    rows = []
    for r in find_runs(folder):
        rel = Path(os.path.relpath(r["folder"].resolve(), path.parent.resolve()))
        link = (f'<a href="{esc(str(rel / "report.html"))}">report</a>' if r["report"]
                else "(no report yet)")
        rows.append(f'<tr><td class="l">{esc(str(rel))}</td><td class="l">{esc(r["study"])}'
                    f'</td><td class="l">{esc(r["preset"])}</td><td>{r["scale"]}</td>'
                    f'<td>{r["units"]}</td><td>{"yes" if r["finished"] else "no"}</td>'
                    f'<td>{r["modified"]:%Y-%m-%d %H:%M}</td><td class="l">{link}</td></tr>')
    table = ("<table><tr><th class='l'>run</th><th class='l'>study</th><th class='l'>preset"
             "</th><th>scale</th><th>units stored</th><th>finished</th><th>modified</th>"
             "<th class='l'>report</th></tr>\n" + "\n".join(rows) + "</table>"
             if rows else "<p>No study runs here.</p>")
    title = f"polysdk runs under {folder}"
    path.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
                    f"{esc(title)}</title><style>{STYLE}</style></head><body>\n<h1>"
                    f"{esc(title)}</h1>\n{table}\n</body></html>\n", encoding="utf-8")
    return path
