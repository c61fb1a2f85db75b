"""Probe subprocess for the resume fault test (killed with SIGKILL mid-run).

    python tests/probe_fault_worker.py STORE

Runs ``Probe.run`` over a deterministic stream of dynamically padded token batches
into a per-token store opened with mode="a"; a rerun after a kill must resume.
"""

from __future__ import annotations

import sys
import time

import torch

from polysdk import ActivationStore, Probe

N_BATCHES, VOCAB, WIDTH = 40, 50, 6


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(VOCAB, WIDTH), torch.nn.Tanh())


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(N_BATCHES):
        lengths = torch.randint(1, 9, (3,), generator=g)
        ids = torch.randint(1, VOCAB, (3, int(lengths.max())), generator=g)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        out.append({"input": ids * mask, "attention_mask": mask, "label": torch.full((3,), i)})
    return out


def forward(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    time.sleep(0.05)
    net(batch["input"])


if __name__ == "__main__":
    net = model()
    with ActivationStore(sys.argv[1], mode="a", chunk_samples=4, commit_interval=0) as store:
        Probe(net, "1", store=store).run(
            batches(), forward=forward, mask=lambda b: b["attention_mask"], progress=False)
