"""One self-contained HTML page per report: headline findings first, figures inline.

    from polysdk.reporting import ReportPage, Finding
    page = ReportPage("Toy models: LR1", intro="12 models ...")
    page.findings([Finding("larger lr: more monosemantic neurons", run="0.27 vs 0.00",
                           seed="more at larger rates (paper)", verdict="agrees")])
    page.figure(fig, "Loss against step", save_as="runs/demo/figures/training.png")
    page.table(rows, "Per-instance numbers")
    page.config(record)
    page.write("runs/demo/report.html")

Images are embedded as base64 PNG (the page works offline, copied anywhere, mailed);
``save_as`` also writes the PNG beside it. Each image is shown at its CSS width (see
:mod:`polysdk.reporting.figures`), so its text is as large on the page as it was drawn.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polysdk.reporting.figures import css_width, png_bytes

__all__ = ["Finding", "ReportPage", "fmt", "STYLE"]

STYLE = """body{font-family:system-ui,sans-serif;font-size:16px;line-height:1.45;
max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:26px}h2{font-size:21px;margin-top:1.6em}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f0f0f0}td.l,th.l{text-align:left}
img{max-width:100%;height:auto}figure{margin:1.5em 0}figcaption{font-size:15px;color:#444}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:13px}
.findings td{text-align:left;vertical-align:top}
.agrees{color:#176b2c;font-weight:600}.differs{color:#a3231b;font-weight:600}
.untested{color:#666}"""


def fmt(x: Any) -> str:
    """Numbers to 4 significant digits; the rest as ``str``.

    >>> fmt(0.123456), fmt(3), fmt("ReLU")
    ('0.1235', '3', 'ReLU')
    """
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


@dataclass(frozen=True)
class Finding:
    """One headline row: what the seed reports, what this run gives, and the verdict
    ("agrees", "differs" or "not tested here")."""

    finding: str
    run: str
    seed: str
    verdict: str = "not tested here"


class ReportPage:
    """A report being assembled (see the module docstring); :meth:`write` writes it."""

    def __init__(self, title: str, intro: str = "") -> None:
        self.title, self.intro = title, intro
        self._findings: list[Finding] = []
        self._parts: list[str] = []

    def findings(self, rows: Sequence[Finding]) -> ReportPage:
        """The headline block, shown first (the run against the seed's numbers)."""
        self._findings.extend(rows)
        return self

    def section(self, heading: str, text: str = "") -> ReportPage:
        self._parts.append(f"<h2>{html.escape(heading)}</h2>"
                           + (f"<p>{html.escape(text)}</p>" if text else ""))
        return self

    def figure(self, fig: Any, caption: str, save_as: str | Path | None = None
               ) -> ReportPage:
        """Embed a ``Figure`` (and write its PNG to ``save_as``); the figure is closed."""
        data = png_bytes(fig)
        if save_as is not None:
            Path(save_as).parent.mkdir(parents=True, exist_ok=True)
            Path(save_as).write_bytes(data)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cap = html.escape(caption)
        name = f' data-file="{html.escape(Path(save_as).name)}"' if save_as else ""
        self._parts.append(f'<figure><img src="{src}" width="{css_width(fig)}" alt="{cap}"'
                           f"{name}><figcaption>{cap}</figcaption></figure>")
        fig.clear()
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], caption: str = "",
              left: Sequence[str] = ()) -> ReportPage:
        """A table of dict rows (columns from the first row); ``left``: left-aligned."""
        if caption:
            self._parts.append(f"<h2>{html.escape(caption)}</h2>")
        if not rows:
            self._parts.append("<p>(none)</p>")
            return self
        head = list(rows[0])

        def cell(tag: str, key: str, text: str) -> str:
            cls = ' class="l"' if key in left else ""
            return f"<{tag}{cls}>{text}</{tag}>"

        body = "\n".join("<tr>" + "".join(cell("td", h, html.escape(fmt(r.get(h, ""))))
                                          for h in head) + "</tr>" for r in rows)
        self._parts.append("<table><tr>" + "".join(cell("th", h, html.escape(h))
                                                   for h in head) + f"</tr>\n{body}</table>")
        return self

    def config(self, record: Mapping[str, Any], heading: str = "Config") -> ReportPage:
        self._parts.append(f"<h2>{html.escape(heading)}</h2><pre>"
                           f"{html.escape(json.dumps(record, indent=2, default=str))}</pre>")
        return self

    def html(self) -> str:
        esc = html.escape
        find = ""
        if self._findings:
            rows = "\n".join(
                f"<tr><td>{esc(f.finding)}</td><td>{esc(f.seed)}</td><td>{esc(f.run)}</td>"
                f'<td class="{_verdict_class(f.verdict)}">{esc(f.verdict)}</td></tr>'
                for f in self._findings)
            find = ('<h2>Headline findings</h2><table class="findings"><tr>'
                    '<th class="l">finding</th><th class="l">seed</th>'
                    '<th class="l">this run</th><th class="l">verdict</th></tr>\n'
                    f"{rows}</table>")
        intro = f"<p>{esc(self.intro)}</p>" if self.intro else ""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width">'
                f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body>\n"
                f"<h1>{esc(self.title)}</h1>\n{find}\n{intro}\n"
                + "\n".join(self._parts) + "\n</body></html>\n")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


def _verdict_class(verdict: str) -> str:
    v = verdict.lower()
    return "agrees" if v.startswith("agree") else "differs" if v.startswith("differ") \
        else "untested"
