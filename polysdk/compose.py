"""``Compose``: attach several components in a defined order, and remove them all.

Any mix of components with ``attach()``/``detach()`` (interventions, probes,
regularizers, ``UnitMask``, ``Trace``)::

    with Compose(UnitMask(model, "fc1", units=[3]), Steer(model, "fc2", d), Trace(model, "fc3")):
        model(x)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Self

from polysdk.errors import ConfigError

__all__ = ["Compose"]


class Compose:
    """Attach ``components`` first to last (on a shared site the first edits first);
    detach them last to first.

    If attaching one fails, the ones already attached are removed before the error
    propagates; detaching tries every component even when one raises (the first error
    is raised after). ``inactive()`` switches off every component that has the switch.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> from polysdk.intervene import Clamp, Steer
    >>> with Compose(Clamp(net, "0", 1.0), Steer(net, "0", torch.ones(3), scale=2.0)) as both:
    ...     print(net(torch.zeros(1, 2)).tolist())
    ...     with both.inactive():
    ...         print(net(torch.zeros(1, 2)).tolist() == net[0](torch.zeros(1, 2)).tolist())
    [[3.0, 3.0, 3.0]]
    True
    """

    def __init__(self, *components: Any) -> None:
        if len(components) == 1 and isinstance(components[0], (list, tuple)):
            components = tuple(components[0])
        for c in components:
            if not (hasattr(c, "attach") and hasattr(c, "detach")):
                raise ConfigError(
                    f"Compose takes components with attach()/detach() (interventions, "
                    f"probes, regularizers, maskers, traces); got {type(c).__name__}"
                )
        self.components = list(components)

    @property
    def attached(self) -> bool:
        return any(getattr(c, "attached", False) for c in self.components)

    def attach(self) -> Self:
        done: list[Any] = []
        try:
            for c in self.components:
                c.attach()
                done.append(c)
        except BaseException:
            for c in reversed(done):
                c.detach()
            raise
        return self

    def detach(self) -> None:
        first_error: BaseException | None = None
        for c in reversed(self.components):
            try:
                c.detach()
            except BaseException as err:  # keep removing the others
                first_error = first_error or err
        if first_error is not None:
            raise first_error

    @contextlib.contextmanager
    def inactive(self) -> Iterator[Self]:
        """Every component with an ``inactive()`` switch is off within the block."""
        with contextlib.ExitStack() as stack:
            for c in self.components:
                if hasattr(c, "inactive"):
                    stack.enter_context(c.inactive())
            yield self

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(c) for c in self.components)})"
