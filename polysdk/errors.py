"""One exception hierarchy for polysdk.

Every error says what was wrong, with what value, and what to do. Each class also
subclasses the builtin it refines, so ``except ValueError`` / ``except KeyError`` keeps
working in user code::

    try:
        Probe(model, "feature.3")
    except polysdk.errors.SiteNotFoundError as err:
        print(err)   # names the closest real module names
"""

from __future__ import annotations


class PolysdkError(Exception):
    """Base class of every error raised by polysdk."""


class PolysdkWarning(UserWarning):
    """Base class of every warning emitted by polysdk."""


class SiteNotFoundError(PolysdkError, KeyError):
    """A site name or pattern matched no module (or hook point) of the model."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0]) if self.args else ""


class SiteError(PolysdkError, ValueError):
    """A site exists but cannot be used as asked (wrong output type, bad key, ...)."""


class StoreError(PolysdkError, OSError):
    """The activation store cannot be opened, written or read as asked."""


class StoreSchemaError(StoreError, ValueError):
    """An append does not match what the store already holds (units, dtype, dims)."""


class ResumeMismatchError(StoreError, ValueError):
    """A run asked to resume a store whose committed batches are not this data's."""


class WriterError(StoreError):
    """The background writer failed; the original exception is chained."""


class NotFittedError(PolysdkError, ValueError, AttributeError):
    """A fitted attribute (ending in ``_``) was read before ``fit`` was called."""


class DetectorInputError(PolysdkError, ValueError):
    """A detector received data it cannot use (wrong dims, NaN, missing labels, ...)."""


class ConfigError(PolysdkError, ValueError):
    """A study, component or parameter configuration is invalid."""


class FitKeywordError(ConfigError, TypeError):
    """``fit`` got a keyword it does not take (a ``ConfigError`` and a ``TypeError``,
    as Python raises for an unexpected keyword)."""


def closest_names(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (for helpful error messages)."""
    import difflib

    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if len(close) < n:
        # also suggest names sharing the final component (``hook_post`` etc.)
        tail = name.rsplit(".", 1)[-1]
        close += [c for c in candidates if c.endswith(tail) and c not in close][: n - len(close)]
    return close
