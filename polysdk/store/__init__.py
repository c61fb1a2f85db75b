"""Layer 2: the activation store, the only place in polysdk that knows Zarr.

    from polysdk.store import ActivationStore
    with ActivationStore("acts.zarr", mode="w", attrs={"model": "mlp"}) as store:
        store.append({"fc1": acts}, dims={"fc1": ("sample", "unit")}, coords={"label": y})
    ActivationStore("acts.zarr")["fc1"]          # lazy xr.DataArray, plain xarray underneath

On disk: one Zarr v3 group per site (``activation`` + per-sample coords + ``sample``),
derived results under ``results/<name>``, and a root ``zarr.json`` with consolidated
metadata that is the commit record (see ``_layout``).
"""

from polysdk.store._layout import DEFAULT_CODEC
from polysdk.store._store import ActivationStore

__all__ = ["ActivationStore", "DEFAULT_CODEC"]
