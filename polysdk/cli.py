"""The ``polysdk`` command line.

    polysdk run toy-models --batch LR1 --quick --out runs/demo   # train, report
    polysdk run toy-models --batch K1 --set seeds=2 --set N=128 --sweep k=16,32,64
    polysdk list                                                # studies and presets
    polysdk report runs/demo                                    # re-make the report

``run`` resumes a killed run in the same ``--out`` (``--fresh`` starts over) and prints
the report's path at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polysdk.errors import ConfigError, PolysdkError

__all__ = ["main", "build_parser"]


def _key_value(text: str) -> tuple[str, Any]:
    from polysdk.studies.base import parse_value

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r} (e.g. --set N=128)")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polysdk", description="Research on polysemantic neurons and superposition.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a study and write its report")
    run.add_argument("study", help="study name (see `polysdk list`), e.g. toy-models")
    run.add_argument("--batch", "--preset", dest="preset", default=None,
                     help="preset of the study (toy-models: a Table 1 batch, e.g. LR1)")
    run.add_argument("--quick", action="store_true", help="small scale that runs on a CPU")
    run.add_argument("--out", default=None, help="output folder (default runs/<study>-<preset>)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    run.add_argument("--set", dest="sets", action="append", type=_key_value, default=[],
                     metavar="KEY=VALUE", help="override a parameter (repeatable)")
    run.add_argument("--sweep", dest="sweeps", action="append", type=_key_value, default=[],
                     metavar="VAR=V1,V2", help="sweep a parameter instead of the preset's "
                     "(repeat for a grid)")
    run.add_argument("--fresh", action="store_true",
                     help="start over instead of resuming what --out holds")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("list", help="list the studies and their presets")

    rep = sub.add_parser("report", help="re-make the report of a finished run folder")
    rep.add_argument("out", help="the run's output folder (holds config.json)")
    return parser


def _cmd_run(args: argparse.Namespace) -> Path:
    from polysdk.studies.base import get_study

    cls = get_study(args.study)
    overrides: dict[str, Any] = dict(args.sets)
    if args.sweeps:
        overrides["sweep"] = {k: v if isinstance(v, list) else [v] for k, v in args.sweeps}
    study = cls.from_options(args.preset, quick=args.quick, device=args.device,
                             overrides=overrides, progress=not args.no_progress)
    out = args.out or f"runs/{args.study}-{(args.preset or 'default').lower()}" \
                      f"{'-quick' if args.quick else ''}"
    return study.run(out=out, resume=not args.fresh)


def _cmd_list() -> None:
    from polysdk.studies.base import available_studies

    for name, cls in available_studies().items():
        print(f"{name}: {cls.description}")
        for preset, text in cls.presets.items():
            print(f"    {preset:5s} {text}")


def _cmd_report(args: argparse.Namespace) -> Path:
    from polysdk.studies.base import Study, get_study

    cfg_path = Study.paths(args.out)["config"]
    if not cfg_path.exists():
        raise ConfigError(f"{str(cfg_path)!r} does not exist: {args.out!r} is not a run "
                          "folder; pass the --out folder of a `polysdk run`.")
    cfg = json.loads(cfg_path.read_text())
    return get_study(cfg["study"]).from_config(cfg).make_report(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polysdk`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            path = _cmd_run(args)
            print(f"report: {path}")
        elif args.command == "list":
            _cmd_list()
        elif args.command == "report":
            print(f"report: {_cmd_report(args)}")
    except PolysdkError as err:
        print(f"polysdk: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
