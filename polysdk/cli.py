"""The ``polysdk`` command line.

    polysdk run toy-models --batch LR1 --quick --out runs/demo   # train, report
    polysdk run toy-models --batch K1 --set seeds=2 --set N=128 --sweep k=16,32,64
    polysdk run toy-models --quick --scheduler tcp://10.0.0.5:8786  # units on a cluster
    polysdk list                                   # studies, presets, values at each scale
    polysdk list toy-models --batch LR1 --quick    # every value such a run would use
    polysdk report runs/demo                       # re-make a run's report from its store
    polysdk index runs                             # runs/index.html lists the runs
    polysdk atlas acts.zarr --site fc1 --out out   # every detector on a site: out/atlas.html

``run`` resumes a killed run in the same ``--out`` (``--fresh`` starts over) and prints
the report's path at the end. ``--set KEY=VALUE`` takes any field of the study's config
(typed by the field; an unknown key names the closest). Every bad command-line value
ends in one line, ``polysdk: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polysdk.errors import ConfigError, PolysdkError

__all__ = ["main", "build_parser"]


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r} (e.g. --set N=128)")
    key, value = text.split("=", 1)
    return key.strip(), value


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", "--preset", dest="preset", default=None,
                   help="preset of the study (toy-models: a Table 1 batch, e.g. LR1)")
    p.add_argument("--quick", action="store_true", help="small scale that runs on a CPU")
    p.add_argument("--set", dest="sets", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="set a config field (repeatable)")
    p.add_argument("--sweep", dest="sweeps", action="append", type=_key_value, default=[],
                   metavar="VAR=V1,V2", help="sweep a field instead of the preset's sweep "
                   "(repeat for a grid)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polysdk", description="Research on polysemantic neurons and superposition.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a study and write its report")
    run.add_argument("study", help="study name (see `polysdk list`), e.g. toy-models")
    _add_config_options(run)
    run.add_argument("--out", default=None, help="output folder (default runs/<study>-<preset>)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="run the units on this dask.distributed scheduler")
    run.add_argument("--fresh", action="store_true",
                     help="start over instead of resuming what --out holds")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-report", action="store_true", help="store results, skip the report")

    lst = sub.add_parser("list", help="list the studies and their presets (with values)")
    lst.add_argument("study", nargs="?", default=None,
                     help="one study: print every value a run with these options uses")
    _add_config_options(lst)

    rep = sub.add_parser("report", help="re-make the report of a run folder from its store")
    rep.add_argument("out", help="the run's output folder (or, with --index, a folder of runs)")
    rep.add_argument("--index", action="store_true",
                     help="write an index page of the runs under the folder instead")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")

    idx = sub.add_parser("index", help="write <folder>/index.html listing the runs under it")
    idx.add_argument("folder", help="folder holding run folders, e.g. runs")

    atl = sub.add_parser("atlas", help="fit every applicable detector on a store's site(s) and "
                         "write the agreement atlas page (with neuron pages)")
    atl.add_argument("store", help="an activation store (a .zarr folder)")
    atl.add_argument("--site", dest="sites", action="append", default=None, metavar="SITE",
                     help="a site of the store (repeatable; default: every site)")
    atl.add_argument("--out", default=None, help="folder of the page (default: "
                     "<store>-atlas beside the store)")
    atl.add_argument("--detectors", default=None, metavar="A,B",
                     help="comma-separated detector names (default: every applicable one)")
    atl.add_argument("--pages", type=int, default=10,
                     help="neuron pages per site for the most disputed units (default 10)")
    atl.add_argument("--labels", default=None, metavar="COORD",
                     help="coordinate holding each input's label (default: 'label', on "
                     "texts 'concept'), e.g. --labels text_set")
    atl.add_argument("--truth", default=None, metavar="RESULT",
                     help="stored result with the planted truth (default: truth/<site> if any)")
    atl.add_argument("--save", action="store_true",
                     help="also store each site's table in the store as result atlas/<site>")
    atl.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _cmd_atlas(args: argparse.Namespace) -> Path:
    from polysdk.atlas import Atlas
    from polysdk.store import ActivationStore

    path = Path(args.store)
    if not (path / "zarr.json").exists():
        raise ConfigError(f"no activation store at {str(path)!r}; pass the .zarr folder "
                          "a Probe or ActivationStore wrote.")
    if args.pages < 0:
        raise ConfigError(f"--pages {args.pages} must be >= 0.")
    names = [d.strip() for d in args.detectors.split(",") if d.strip()] if args.detectors \
        else None
    if args.detectors is not None and not names:
        raise ConfigError(f"--detectors {args.detectors!r} names no detector; e.g. "
                          "--detectors class_selectivity,hdbscan.")
    store = ActivationStore(path, mode="a" if args.save else "r")
    try:
        if args.labels is not None:
            for site in args.sites or store.sites:
                if site in store.sites and args.labels not in store[site].coords:
                    have = [str(c) for c in store[site].coords if c not in ("unit",)]
                    raise ConfigError(f"--labels {args.labels!r}: site {site!r} has no such "
                                      f"coordinate; it has {have}.")
        atlas = Atlas(store, sites=args.sites, detectors=names, truth=args.truth,
                      labels=args.labels).fit()
        if args.save:
            atlas.save(store)
        out = Path(args.out) if args.out else path.parent / f"{path.name.removesuffix('.zarr')}-atlas"
        return atlas.to_html(out / "atlas.html", pages=args.pages)
    finally:
        if args.save:
            store.close()


def _build_study(args: argparse.Namespace, study_name: str, **kwargs: Any) -> Any:
    """The study the options describe (every value checked; ConfigError if not)."""
    from polysdk.studies import get_study
    from polysdk.studies.config import parse_sweep

    cls = get_study(study_name)
    preset = args.preset or cls.default_preset
    settings: dict[str, Any] = {}
    for key, value in args.sets:
        settings[key] = value   # parsed by the field's type in Study.resolve_config
    if args.sweeps:
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        if "sweep" not in fields:
            raise ConfigError(f"the study {cls.name!r} has no sweep; set single values with "
                              "--set KEY=VALUE instead.")
        settings["sweep"] = {k: parse_sweep(cls.Config, k, v) for k, v in args.sweeps}
    try:
        return cls(preset, quick=args.quick, **settings, **kwargs)
    except PolysdkError:
        raise
    except (TypeError, ValueError) as err:   # a config's own check that is not ours
        raise ConfigError(f"{cls.name}: {err}") from err


def _cmd_run(args: argparse.Namespace) -> Path:
    study = _build_study(args, args.study, device=args.device,
                         progress=not args.no_progress)
    return study.run(out=args.out, resume=not args.fresh, report=not args.no_report,
                     client=args.scheduler)


def _cmd_list(args: argparse.Namespace) -> None:
    from polysdk.studies import STUDIES, available_studies

    if args.study is not None:
        study = _build_study(args, args.study)
        print(f"{study.name} (preset {study.preset or '-'}"
              f"{', quick scale' if study.quick else ''}): the values a run uses")
        for f in dataclasses.fields(study.config):
            print(f"    {f.name} = {getattr(study.config, f.name)!r}")
        return
    if args.preset or args.quick or args.sets or args.sweeps:
        raise ConfigError("--batch/--quick/--set/--sweep need a study: "
                          "polysdk list STUDY --quick ...")
    for name, cls in available_studies().items():
        where = STUDIES.sources().get(name, "")
        origin = "" if where in ("built-in", "registered") else f" [plugin {where}]"
        default = f" (default preset {cls.default_preset})" if cls.default_preset else ""
        print(f"{name}: {cls.description}{default}{origin}")
        configs = dict(cls.presets) or {"(defaults)": cls.Config()}
        for preset, cfg in configs.items():
            print(f"    {preset:5s} {cls.describe_config(cfg)}")
            quick = cls.quick_config(cfg)
            if quick != cfg:
                from polysdk.studies.config import describe

                print(f"    {'':5s} --quick: {describe(quick, cfg)}")


def _cmd_report(args: argparse.Namespace) -> Path:
    if args.index:
        from polysdk.reporting import write_index

        return write_index(args.out)
    from polysdk.studies import Study

    return Study.load(args.out, progress=False).make_report(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polysdk`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from polysdk._util import set_progress

    if getattr(args, "no_progress", False):
        set_progress(False)  # every bar, the detectors' and trainers' included
    try:
        if args.command == "run":
            print(f"{'report' if not args.no_report else 'store'}: {_cmd_run(args)}")
        elif args.command == "list":
            _cmd_list(args)
        elif args.command == "report":
            print(f"{'index' if args.index else 'report'}: {_cmd_report(args)}")
        elif args.command == "index":
            from polysdk.reporting import write_index

            print(f"index: {write_index(args.folder)}")
        elif args.command == "atlas":
            print(f"atlas: {_cmd_atlas(args)}")
    except PolysdkError as err:
        print(f"polysdk: error: {err}", file=sys.stderr)
        return 2
    finally:
        set_progress(None)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
