"""``Trace``: read the values of some sites during a forward pass, optionally stopping.

As baukit's ``Trace`` / ``TraceDict``, on polysdk's hook layer (nothing attached until
``attach``/``with``, every handle removed however the block ends)::

    with Trace(model, ["features.3", "features.6"]) as tr:
        model(images)
    tr["features.6"]                 # the live tensor (it carries its gradient)

    tr = Trace(model, "features.6", stop=True)
    h = tr.run(model, images)["features.6"]   # later layers never run

* Each forward of the model starts afresh: the values are those of the latest
  forward (a site called twice in one forward keeps its last value).
* ``stop=True`` ends the forward as soon as every site has been read, by raising
  :class:`StopForward` from the hook; :meth:`Trace.run` and the ``with`` block catch
  it (a model that catches every ``Exception`` in its own forward would swallow it:
  use ``stop=False`` there).
* The value kept is the tensor the module produced; later layers get a copy, so an
  in-place op after the site (``ReLU(inplace=True)``) cannot change the kept value
  nor its place in the autograd graph. ``keep_grad=False`` keeps detached values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import torch

from polysdk.component import Component
from polysdk.errors import SiteError
from polysdk.params import TypeOf
from polysdk.sites import Capture, SiteSpec, TensorKey

__all__ = ["StopForward", "Trace"]


class StopForward(Exception):
    """Raised by a ``Trace(stop=True)`` hook to end the forward pass; caught by it."""

    def __init__(self, trace: Trace) -> None:
        super().__init__("forward stopped by a polysdk Trace after its last site")
        self.trace = trace


class Trace(Component):
    """Keep the values of ``sites`` from each forward pass; optionally stop after them.

    Parameters
    ----------
    model, sites, capture, key
        As for every hooked component (:func:`polysdk.sites.resolve_sites`).
    stop
        End the forward pass as soon as every site has been read.
    keep_grad
        Keep the live tensor (with its autograd graph; default) or, when False,
        ``tensor.detach()``.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> with Trace(net, ["0", "2"]) as tr:
    ...     _ = net(torch.zeros(4, 2))
    >>> [tuple(v.shape) for v in tr.values.values()]
    [(4, 3), (4, 1)]
    >>> out = Trace(net, "0", stop=True).run(net, torch.zeros(4, 2))
    >>> list(out)
    ['0']
    """

    _constraints = {"stop": TypeOf(bool), "keep_grad": TypeOf(bool)}

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        stop: bool = False,
        keep_grad: bool = True,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.stop = stop
        self.keep_grad = keep_grad
        self._validate_params()
        super().__init__(model, sites, capture=capture, key=key)
        self._values: dict[str, torch.Tensor] = {}
        self.output: Any = None

    def _on_attach(self) -> None:
        self._values = {}
        self._hook_forward(lambda args, kwargs: self._values.clear(), lambda ok: None)

    def hook(self, site: str, tensor: torch.Tensor) -> torch.Tensor | None:
        self._values[site] = tensor if self.keep_grad else tensor.detach()
        if self.stop and len(self._values) == len(self.site_names):
            raise StopForward(self)
        return tensor.clone()

    # ------------------------------------------------------------------ reading
    @property
    def values(self) -> dict[str, torch.Tensor]:
        """``{site: value}`` of the sites the latest forward reached, in site order."""
        return {s: self._values[s] for s in self.site_names if s in self._values}

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self._values:
            if site not in self.site_names:
                raise SiteError(f"{site!r} is not traced; traced sites: {self.site_names}")
            raise SiteError(
                f"site {site!r} did not run in the last forward pass; choose a module that "
                f"the model calls (or run a forward inside the trace first)"
            )
        return self._values[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Call ``fn(*args, **kwargs)`` (the model, or any callable running it) and
        return every site's value; attaches for the call when not attached.

        The call's result is kept as ``output`` (``None`` when the trace stopped it).
        Raises :class:`~polysdk.errors.SiteError` when a site did not run.
        """
        was_attached = self.attached
        self.attach()
        self._values = {}
        self.output = None
        try:
            self.output = fn(*args, **kwargs)
        except StopForward as stop:
            if stop.trace is not self:
                raise
        finally:
            if not was_attached:
                values = dict(self._values)
                self.detach()
                self._values = values
        missing = [s for s in self.site_names if s not in self._values]
        if missing:
            raise SiteError(
                f"sites {missing} did not run in the forward pass; choose modules that the "
                f"model calls"
            )
        return self.values

    def __enter__(self) -> Self:
        self._values = {}
        return self.attach()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.detach()
        return isinstance(exc, StopForward) and exc.trace is self
