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

from polysdk.dims import default_dims
from polysdk.sites._hooks import HookedComponent, Hooks, hook_gradient, hook_optimizer_step
from polysdk.sites._names import (
    Capture,
    HookFn,
    SiteSpec,
    TensorKey,
    list_sites,
    resolve_sites,
    unwrap_model,
)
from polysdk.sites._values import get_tensor, set_tensor

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
