"""The registry module (names, entry points, closest-name errors) and typed configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from polysdk.errors import ConfigError
from polysdk.registry import Registry
from polysdk.studies import STUDIES, Study
from polysdk.studies.config import parse_setting, parse_sweep, parse_text, with_settings


def test_registry_names_builtins_plugins_and_errors() -> None:
    reg: Registry = Registry("widget", group="polysdk.studies",
                             builtins={"example-noise": "builtins:dict"})
    assert reg.get("example-noise") is dict       # a built-in is not shadowed by a plugin
    reg.register("mine", list)
    assert reg.get("mine") is list and "mine" in reg and reg.sources()["mine"] == "registered"
    with pytest.raises(ConfigError, match="unknown widget 'mien'. Did you mean 'mine'"):
        reg.get("mien")
    reg.unregister("mine")
    assert "mine" not in reg
    broken: Registry = Registry("widget", builtins={"bad": "no_such_module:X"})
    with pytest.raises(ConfigError, match="'bad' .*no_such_module.* failed to load"):
        broken.get("bad")
    assert broken.items() == {}                   # listing skips (and logs) a broken one


def test_study_registry() -> None:
    assert {"toy-models", "example-noise"} <= set(STUDIES.names())
    with pytest.raises(ConfigError, match="'toy-models'"):
        STUDIES.get("toy-model")
    with pytest.raises(ConfigError, match="not a Study subclass"):
        STUDIES.register("x", dict)


@dataclass(frozen=True)
class Cfg:
    n: int = 3
    rate: float = 0.1
    on: bool = False
    name: str = "a"
    mode: Literal["fast", "slow"] = "fast"
    width: int | None = None
    threads: int | str | None = "auto"
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


def test_typed_settings() -> None:
    cfg = with_settings(Cfg(), {"n": "5", "rate": "1e-2", "on": "yes", "mode": "slow",
                                "width": "none", "threads": "2", "sizes": "1,2"})
    assert cfg == Cfg(n=5, rate=0.01, on=True, mode="slow", width=None, threads=2,
                      sizes=[1, 2])
    assert with_settings(Cfg(), {"threads": "auto"}).threads == "auto"
    assert parse_text("1e3", int) == 1000
    for key, text, says in [("n", "1.5", "not an int"), ("on", "maybe", "not a bool"),
                            ("mode", "medium", "not one of"), ("rate", "x", "not a float"),
                            ("ratee", "1", "'rate'")]:
        with pytest.raises(ConfigError, match=says):
            parse_setting(Cfg, key, text)
    with pytest.raises(ConfigError, match="n must be >= 0"):    # the config's own check
        with_settings(Cfg(), {"n": "-1"})
    assert parse_sweep(Cfg, "rate", "0.1,0.2") == [0.1, 0.2]
    with pytest.raises(ConfigError, match="'b' is not a float"):
        parse_sweep(Cfg, "rate", "a,b".replace("a", "0.1"))


def test_a_study_in_python(tmp_path) -> None:
    import xarray as xr

    from polysdk.studies import Unit, register_study

    @dataclass(frozen=True)
    class C:
        seed: int = 0

    class Tiny(Study[C]):
        name, Config = "tiny-in-python", C

        def units(self):
            return [Unit("t/a"), Unit("t/b")]

        def run_unit(self, unit):
            import numpy as np

            return xr.Dataset({"x": ("i", np.random.rand(3))})   # seeded by the base

        def make_report(self, out):
            return self.paths(out)["store"]

    register_study(Tiny)
    try:
        assert STUDIES.get("tiny-in-python") is Tiny
        Tiny().run(out=tmp_path / "a")
        Tiny().run(out=tmp_path / "b")
        a, b = Tiny().results(tmp_path / "a"), Tiny().results(tmp_path / "b")
        assert (a["t/a"]["x"].values == b["t/a"]["x"].values).all()
        assert (a["t/a"]["x"].values != a["t/b"]["x"].values).any()   # own seed per unit
    finally:
        STUDIES.unregister("tiny-in-python")


def test_a_taken_name_raises_unless_overwrite():
    from polysdk.errors import ConfigError
    from polysdk.registry import Registry

    reg = Registry("thing", group=None)
    reg.register("a", int)
    reg.register("a", int)  # the same object again: fine
    with pytest.raises(ConfigError, match="taken by"):
        reg.register("a", str)
    reg.register("a", str, overwrite=True)
    assert reg.get("a") is str
