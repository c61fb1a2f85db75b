"""Studies: the experiments of the seed documents, from Python, scripts or the CLI.

    from polysdk.studies import get_study
    get_study("toy-models")("LR1", quick=True).run(out="runs/demo")   # -> report path

A study is a :class:`Study` subclass (see :mod:`polysdk.studies.base`) found by name:
the built-ins, :func:`register_study`, and the ``polysdk.studies`` entry points of
installed packages (a user's study is as first-class as ours). ``available_studies()``
lists them by their ``polysdk run`` names.
"""

from typing import Any

from polysdk.studies.base import (
    STUDIES, Study, Unit, UnitError, available_studies, get_study, register_study,
)

__all__ = ["STUDIES", "Study", "Unit", "UnitError", "ToyModelStudy", "available_studies",
           "get_study", "register_study"]


def __getattr__(name: str) -> Any:   # the toy study loads on first use, not on import
    if name == "ToyModelStudy":
        from polysdk.studies.toy_models import ToyModelStudy

        return ToyModelStudy
    raise AttributeError(f"module 'polysdk.studies' has no attribute {name!r}")
