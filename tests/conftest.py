"""Shared fixtures and options for the polysdk test suite."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test uses one intra-op thread: the tensors are tiny, ``make test`` already runs
    two pytest workers on the two cores, and two threads each would oversubscribe them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tl_model():
    """A tiny random TransformerLens 4 native model with SoLU MLPs (2 layers)."""
    from transformer_lens.model_bridge.sources.native import TransformerBridgeConfig, boot

    torch.manual_seed(0)
    cfg = TransformerBridgeConfig(
        d_model=16, d_head=4, n_layers=2, n_ctx=8, n_heads=4, d_vocab=20, act_fn="solu_ln"
    )
    model = boot(cfg)
    model.eval()
    return model


@pytest.fixture()
def tl_tokens() -> torch.Tensor:
    return torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(1))
