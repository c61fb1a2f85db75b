"""Hooks and HookedComponent: the only place polysdk registers hooks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from polysdk.errors import SiteError
from polysdk.sites._names import Capture, HookFn, SiteSpec, TensorKey, resolve_sites, unwrap_model
from polysdk.sites._values import get_tensor, set_tensor

# --------------------------------------------------------------------------- hooks


class Hooks:
    """A set of forward hooks on one model that removes exactly what it added.

    Building a ``Hooks`` resolves the sites (raising on a bad name) but attaches
    nothing; ``attach()`` / ``__enter__`` attach, ``detach()`` / ``__exit__`` remove.
    Both are idempotent.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> seen = []
    >>> with Hooks(net, "0", lambda site, t: seen.append((site, tuple(t.shape)))):
    ...     _ = net(torch.zeros(4, 2))
    >>> seen
    [('0', (4, 3))]
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Iterable[SiteSpec],
        fn: HookFn,
        *,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        if capture not in ("output", "input"):
            raise SiteError(f"capture must be 'output' or 'input', got {capture!r}")
        self.model = model
        self.fn = fn
        self.capture = capture
        self.key = key
        self.modules = resolve_sites(model, sites)
        self._handles: list[RemovableHandle] = []

    @property
    def site_names(self) -> list[str]:
        return list(self.modules)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _output_hook(self, site: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            replacement = self.fn(site, get_tensor(output, self.key))
            return None if replacement is None else set_tensor(output, replacement, self.key)

        return hook

    def _input_hook(self, site: str) -> Callable[..., Any]:
        key = self.key

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if isinstance(key, str):
                if key not in kwargs:
                    raise SiteError(f"input {key!r} was not passed to {site!r} by keyword")
                replacement = self.fn(site, get_tensor(kwargs[key]))
                if replacement is not None:
                    return args, {**kwargs, key: set_tensor(kwargs[key], replacement)}
                return None
            replacement = self.fn(site, get_tensor(args, key))
            if replacement is None:
                return None
            return set_tensor(args, replacement, key), kwargs

        return hook

    def attach(self) -> Hooks:
        """Register the hooks (no-op when already attached)."""
        if self._handles:
            return self
        try:
            for site, module in self.modules.items():
                if self.capture == "output":
                    handle = module.register_forward_hook(self._output_hook(site))
                else:
                    handle = module.register_forward_pre_hook(
                        self._input_hook(site), with_kwargs=True
                    )
                self._handles.append(handle)
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove exactly the hooks this object added (safe to call twice)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> Hooks:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"Hooks({self.site_names}, capture={self.capture!r}, {state})"


class HookedComponent:
    """Base class of every component that lives on hooks.

    Subclasses implement :meth:`hook`; the base owns resolution, attaching and
    removal. Use it as a context manager or call ``attach()`` / ``detach()``.

    Template methods: :meth:`_on_attach` runs right after the site hooks go on (add
    more hooks there through :meth:`_own`, :meth:`_hook_forward` or the helpers at the
    bottom of this module) and :meth:`_on_detach` right before they come off; every
    handle the component owns is removed on detach, whatever the subclass did.
    :meth:`inactive` turns the effect off for a while with the hooks left in place.

    >>> class PrintShapes(HookedComponent):
    ...     def hook(self, site, tensor):
    ...         print(site, tuple(tensor.shape))
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> with PrintShapes(net, "1") as printer:
    ...     _ = net(torch.zeros(1, 2))
    ...     with printer.inactive():
    ...         _ = net(torch.zeros(1, 2))     # prints nothing
    1 (1, 3)
    """

    def __init__(
        self,
        model: Any,
        sites: SiteSpec | Sequence[SiteSpec],
        *,
        capture: Capture = "output",
        key: TensorKey = None,
    ) -> None:
        self.model = model
        self.sites = sites
        self.capture = capture
        self.key = key
        self._hooks = Hooks(model, sites, self._dispatch, capture=capture, key=key)
        self._owned: list[RemovableHandle] = []
        self._active = True

    @property
    def site_names(self) -> list[str]:
        """The resolved site names, in order."""
        return self._hooks.site_names

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self._hooks.modules)

    @property
    def attached(self) -> bool:
        return self._hooks.attached

    @property
    def active(self) -> bool:
        """False inside :meth:`inactive`: hooks stay attached but change nothing."""
        return self._active

    def hook(self, site: str, tensor: torch.Tensor) -> torch.Tensor | None:
        """Called with each site's value; return a tensor to replace it."""
        raise NotImplementedError(f"{type(self).__name__} must implement hook(site, tensor)")

    def _dispatch(self, site: str, tensor: torch.Tensor) -> torch.Tensor | None:
        return self.hook(site, tensor) if self._active else None

    # ------------------------------------------------------------------ template methods
    def _on_attach(self) -> None:
        """Subclass step after the site hooks are on (default: nothing)."""

    def _on_detach(self) -> None:
        """Subclass step before the owned hooks come off (default: nothing)."""

    def _own(self, handle: RemovableHandle) -> RemovableHandle:
        """Keep ``handle`` (any hook handle) with the component: removed on detach."""
        self._owned.append(handle)
        return handle

    def _hook_forward(
        self,
        before: Callable[[tuple, dict], None],
        after: Callable[[bool], None],
    ) -> None:
        """Hooks around each whole forward of the model (its outermost module).

        ``before(args, kwargs)`` runs as a forward starts; ``after(ok)`` when it ends,
        with ``ok=False`` when the forward raised. Only outermost calls count: a model
        that calls itself inside its forward is one forward.
        """
        root = unwrap_model(self.model)
        depth = [0]

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            depth[0] += 1
            if depth[0] == 1:
                before(args, kwargs)

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            depth[0] -= 1
            if depth[0] == 0:
                after(sys.exc_info()[0] is None)

        self._own(root.register_forward_pre_hook(pre, with_kwargs=True))
        self._own(root.register_forward_hook(post, with_kwargs=True, always_call=True))

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> Self:
        """Register the hooks (no-op when already attached); rolls back on failure."""
        if self._hooks.attached:
            return self
        self._hooks.attach()
        try:
            self._on_attach()
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove every hook this component added (safe to call twice)."""
        try:
            if self._hooks.attached or self._owned:
                self._on_detach()
        finally:
            while self._owned:
                self._owned.pop().remove()
            self._hooks.detach()

    @contextlib.contextmanager
    def inactive(self) -> Iterator[Self]:
        """Within the block the hooks stay attached but have no effect (zennit's switch)."""
        previous, self._active = self._active, False
        try:
            yield self
        finally:
            self._active = previous

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()


# --------------------------------------------------------------------------- other hooks


def hook_gradient(
    tensor: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> RemovableHandle:
    """Register ``fn(grad) -> grad | None`` on a tensor (e.g. to keep pruned weights at zero).

    The caller owns the returned handle and must ``remove()`` it; like every hook in
    polysdk it is registered here and nowhere else.
    """
    return tensor.register_hook(fn)


def hook_optimizer_step(optimizer: torch.optim.Optimizer, fn: Callable[..., None]) -> RemovableHandle:
    """Run ``fn`` after every ``optimizer.step()``; the caller removes the returned handle."""
    return optimizer.register_step_post_hook(fn)
