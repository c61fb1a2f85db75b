"""Site names: unwrap a model, list and resolve names, globs and modules."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from polysdk.errors import SiteError, SiteNotFoundError, closest_names

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
