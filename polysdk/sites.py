"""Sites: name the places in a model where polysdk reads or edits activations.

This is the only module of polysdk that registers hooks. Everything that lives on
hooks (``Probe``, interventions, regularizers, ``UnitMask``) subclasses
:class:`HookedComponent` and so shares one lifecycle::

    from polysdk.sites import Hooks, resolve_sites

    resolve_sites(alexnet, "features.*")            # {"features.0": Conv2d(...), ...}
    with Hooks(model, "blocks.*.mlp.hook_post", lambda site, t: print(site, t.shape)):
        model(tokens)                               # hooks live only inside the block

A *site* is an exact module name, a glob pattern or a module object:

* ``*`` matches within one name component (``features.*`` is the direct children of
  ``features``), ``**`` matches across components (``**.hook_post``), ``?`` and
  ``[...]`` work as in :mod:`fnmatch`.
* TransformerLens 4 ``TransformerBridge`` models resolve through ``model.hook_dict``,
  so every TransformerLens hook name and alias (``blocks.0.mlp.hook_post``) works.
* ``nnsight.NNsight`` wrappers are unwrapped to the module they wrap; hooks fire both
  in a plain call and inside ``with wrapped.trace(...)``.
* Hugging Face ``transformers`` and torchvision models are plain modules.

Hook functions have the signature ``fn(site: str, tensor: Tensor) -> Tensor | None``.
When a module returns a tuple, dict (``ModelOutput``) or dataclass, the tensor is
picked by ``key`` (index, key or field name); by default the *first tensor* found.
Returning a tensor replaces that value in the module's output (or input).

Ownership rules: every name is resolved before any hook is attached (a bad name
raises :class:`~polysdk.errors.SiteNotFoundError` and leaves nothing behind); a hook
set removes exactly the handles it added, on ``detach()``, at the end of a ``with``
block and when the block raises; hooks registered by anyone else are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from polysdk.dims import default_dims
from polysdk.errors import SiteError, SiteNotFoundError, closest_names

__all__ = [
    "HookFn",
    "default_dims",
    "Hooks",
    "HookedComponent",
    "SiteSpec",
    "get_tensor",
    "hook_gradient",
    "hook_optimizer_step",
    "list_sites",
    "resolve_sites",
    "set_tensor",
    "unwrap_model",
]

SiteSpec = str | nn.Module
HookFn = Callable[[str, torch.Tensor], torch.Tensor | None]
Capture = Literal["output", "input"]
TensorKey = int | str | None

_GLOB_CHARS = re.compile(r"[*?\[]")


# --------------------------------------------------------------------------- models


def unwrap_model(model: Any) -> nn.Module:
    """Return the ``nn.Module`` that hooks go on (unwrapping ``nnsight.NNsight``)."""
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "_module", None)  # nnsight 0.8 Envoy / NNsight
    if isinstance(inner, nn.Module):
        return inner
    raise SiteError(
        f"expected a torch.nn.Module (or an nnsight.NNsight wrapping one), got "
        f"{type(model).__name__}; pass the model object itself"
    )


def _site_table(model: Any) -> dict[str, nn.Module]:
    """Every addressable name of ``model``: TransformerLens hook names first."""
    module = unwrap_model(model)
    table: dict[str, nn.Module] = {}
    hook_dict = getattr(module, "hook_dict", None)
    if isinstance(hook_dict, Mapping):
        for name, hook_point in hook_dict.items():
            if isinstance(hook_point, nn.Module):
                table[name] = hook_point
    for name, sub in module.named_modules():
        if name and name not in table:
            table[name] = sub
    return table


def list_sites(model: Any, pattern: str = "**") -> list[str]:
    """Names of ``model`` that match ``pattern`` (all names by default)."""
    regex = _glob_to_regex(pattern)
    return [name for name in _site_table(model) if regex.fullmatch(name)]


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append(r"[^.]*")
            i += 1
        elif char == "?":
            out.append(r"[^.]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])
                i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


def resolve_sites(model: Any, sites: SiteSpec | Iterable[SiteSpec]) -> dict[str, nn.Module]:
    """Resolve site names, glob patterns and module objects to ``{name: module}``.

    The order follows ``sites`` (and the model's own order within a glob). A module
    reachable under several names (a TransformerLens alias) appears once, under the
    first name that matched. Raises :class:`SiteNotFoundError` naming the closest
    real names when a name or pattern matches nothing.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> list(resolve_sites(net, "*"))
    ['0', '1']
    """
    specs: list[SiteSpec]
    if isinstance(sites, (str, nn.Module)):
        specs = [sites]
    else:
        specs = list(sites)
    if not specs:
        raise SiteError("no sites given: pass a module name, a glob pattern or a module")
    table = _site_table(model)
    resolved: dict[str, nn.Module] = {}
    seen: set[int] = set()

    def add(name: str, module: nn.Module) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            resolved[name] = module

    for spec in specs:
        if isinstance(spec, nn.Module):
            name = next((n for n, m in table.items() if m is spec), None)
            if name is None:
                raise SiteNotFoundError(
                    f"module {type(spec).__name__} is not part of the model; pass a "
                    f"submodule of the model you attach to (or its name)"
                )
            add(name, spec)
        elif isinstance(spec, str):
            if spec in table:
                add(spec, table[spec])
                continue
            if _GLOB_CHARS.search(spec):
                regex = _glob_to_regex(spec)
                matches = [(n, m) for n, m in table.items() if regex.fullmatch(n)]
                if matches:
                    for name, module in matches:
                        add(name, module)
                    continue
            close = closest_names(spec, list(table))
            hint = f"; closest names: {', '.join(close)}" if close else ""
            raise SiteNotFoundError(
                f"no module or hook point named {spec!r} in {type(unwrap_model(model)).__name__}"
                f"{hint}. List every name with polysdk.sites.list_sites(model)"
            )
        else:
            raise SiteError(
                f"a site must be a name, a glob pattern or an nn.Module, got "
                f"{type(spec).__name__}: {spec!r}"
            )
    return resolved


# --------------------------------------------------------------------------- values


def _first_tensor_key(value: Any) -> int | str | None:
    if isinstance(value, (tuple, list)):
        return next((i for i, v in enumerate(value) if isinstance(v, torch.Tensor)), None)
    if isinstance(value, Mapping):
        return next((k for k, v in value.items() if isinstance(v, torch.Tensor)), None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return next(
            (f.name for f in dataclasses.fields(value) if isinstance(getattr(value, f.name), torch.Tensor)),
            None,
        )
    return None


def get_tensor(value: Any, key: TensorKey = None) -> torch.Tensor:
    """Pick the tensor out of a module's output (or input).

    ``key`` is a tuple index, a mapping key or a dataclass field name; ``None`` picks
    the first tensor found (the whole value when it is a tensor).
    """
    if isinstance(value, torch.Tensor) and key is None:
        return value
    chosen = _first_tensor_key(value) if key is None else key
    if chosen is None:
        raise SiteError(
            f"found no tensor in a value of type {type(value).__name__}; pass key= "
            f"(an index, key or field name) to choose one"
        )
    try:
        if isinstance(value, (tuple, list)):
            picked = value[int(chosen)]
        elif isinstance(value, Mapping):
            picked = value[chosen]
        elif dataclasses.is_dataclass(value):
            picked = getattr(value, str(chosen))
        else:
            raise TypeError
    except (IndexError, KeyError, AttributeError, TypeError, ValueError):
        raise SiteError(
            f"key {chosen!r} does not select anything in a {type(value).__name__}; "
            f"choose an index, key or field the module actually returns"
        ) from None
    if not isinstance(picked, torch.Tensor):
        raise SiteError(
            f"key {chosen!r} selects a {type(picked).__name__}, not a tensor; choose "
            f"another key"
        )
    return picked


def set_tensor(value: Any, new: torch.Tensor, key: TensorKey = None) -> Any:
    """Return ``value`` with the tensor chosen by ``key`` replaced by ``new``."""
    if isinstance(value, torch.Tensor) and key is None:
        return new
    chosen = _first_tensor_key(value) if key is None else key
    if isinstance(value, tuple):
        items = list(value)
        items[int(chosen)] = new  # type: ignore[arg-type]
        return type(value)(items) if type(value) is tuple else type(value)(*items)
    if isinstance(value, list):
        items = list(value)
        items[int(chosen)] = new  # type: ignore[arg-type]
        return items
    if isinstance(value, Mapping):
        replaced = value.copy() if hasattr(value, "copy") else dict(value)
        replaced[chosen] = new
        return replaced
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{str(chosen): new})
    raise SiteError(f"cannot put a tensor back into a {type(value).__name__}")


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
