"""A user's study from its own package, found through the ``polysdk.studies`` entry point.

    polysdk run example-noise --quick --out runs/noise    # config, two units, a report
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from polysdk.reporting import Finding, ReportPage, heatmap, new_figure
from polysdk.studies import Study, Unit


@dataclass(frozen=True)
class NoiseConfig:
    n: int = 5000                  # samples per unit
    width: int = 8                 # units (columns) per sample
    seed: int = 0
    pause: float = 0.0             # seconds each unit waits (tests kill a run in one)
    trace: str = ""                # a file each unit start is appended to (tests count)
    die_once: str = ""             # a unit that kills its process the first time (tests)

    def quick(self) -> NoiseConfig:
        return replace(self, n=400)


class NoiseStudy(Study[NoiseConfig]):
    """Covariance of white noise: two units (normal, uniform), one heat map each."""

    name = "example-noise"
    description = "a user's study (tests/plugin_package): covariance of white noise"
    Config = NoiseConfig
    presets = {"small": NoiseConfig(n=1000), "wide": NoiseConfig(width=32)}
    runtime_fields = ("pause", "trace", "die_once")

    def units(self) -> list[Unit]:
        return [Unit("noise/normal", "standard_normal"), Unit("noise/uniform", "random")]

    def run_unit(self, unit: Unit) -> xr.Dataset:
        cfg = self.config
        if cfg.trace:
            with open(cfg.trace, "a") as f:
                f.write(f"start {unit.name} pid {os.getpid()}\n")
        if cfg.die_once == unit.name and not Path(cfg.trace + ".died").exists():
            Path(cfg.trace + ".died").touch()
            os._exit(1)   # the process dies as a killed worker would
        x = getattr(np.random.default_rng(unit.seed), unit.spec)((cfg.n, cfg.width))
        time.sleep(cfg.pause)
        z = (x - x.mean(0)) / x.std(0)
        return xr.Dataset({"corr": (("unit", "unit_b"), z.T @ z / cfg.n)})

    def make_report(self, out: str | Path) -> Path:
        results = self.results(out)
        fig, axes = new_figure(1, len(results), width=10, height=4)
        page = ReportPage(f"White noise ({self.preset or 'custom'})", f"n={self.config.n}")
        for ax, (name, ds) in zip(axes[0], results.items()):
            heatmap(ax, ds["corr"].values, label="correlation", title=name, cmap="RdBu_r",
                    vmin=-1, vmax=1)
            off = np.abs(ds["corr"].values - np.eye(self.config.width)).max()
            bound = 5 / np.sqrt(self.config.n)
            page.findings([Finding(f"{name}: columns are uncorrelated", run=f"max |r| "
                                   f"{off:.3f}", seed=f"|r| < {bound:.3f} (5 sigma)",
                                   verdict="agrees" if off < bound else "differs")])
        page.figure(fig, "Correlation between columns", save_as=Path(out) / "figures/corr.png")
        return page.config(self.record()).write(self.paths(out)["report"])
