"""The generic training loop: components attached for the loop, regularizer losses,
evaluation, checkpoints per epoch, and resume = the same weights as one whole run."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polysdk.errors import ConfigError
from polysdk.train.loop import fit, last_checkpoint


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # global RNG
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    return model, loader, opt, sched


def _train(tmp, epochs, fail_at=None, **kw):
    model, loader, opt, sched = _setup()
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("killed mid-epoch")
        return nn.functional.cross_entropy(out, y)

    res = fit(model, loader, epochs=epochs, optimizer=opt, loss_fn=loss_fn, scheduler=sched,
              checkpoint_dir=tmp, progress=False,
              evaluate=lambda m, e: {"w": float(m[0].weight.sum())}, **kw)
    return model, res


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path) -> None:
    whole, res = _train(tmp_path / "whole", epochs=4)
    assert [r["epoch"] for r in res.history] == [0, 1, 2, 3] and res.start_epoch == 0
    assert last_checkpoint(tmp_path / "whole").name == "epoch_0003.pt"
    # stopped after 2 epochs, then the same call with epochs=4
    _train(tmp_path / "cut", epochs=2)
    again, res2 = _train(tmp_path / "cut", epochs=4)
    assert res2.start_epoch == 2 and [r["epoch"] for r in res2.history] == [0, 1, 2, 3]
    # killed in the middle of epoch 3 (batch 4 of 6): redone from the end of epoch 2
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", epochs=4, fail_at=6 * 2 + 4)
    assert last_checkpoint(tmp_path / "killed").name == "epoch_0001.pt"
    killed, res3 = _train(tmp_path / "killed", epochs=4)
    for other in (again, killed):
        for a, b in zip(whole.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b)
    assert res3.history == res.history
    # resume=False starts over
    _, res4 = _train(tmp_path / "cut", epochs=1, resume=False)
    assert res4.start_epoch == 0


class Counting:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def attach(self):
        self.log.append(f"attach {self.name}")

    def detach(self):
        self.log.append(f"detach {self.name}")


class Ctx:
    def __init__(self, log):
        self.log = log

    def __enter__(self):
        self.log.append("enter")
        return self

    def __exit__(self, *exc):
        self.log.append("exit")


class ConstantReg:
    def __init__(self):
        self.labels = []

    def loss(self, *, labels=None):
        self.labels.append(labels)
        return torch.tensor(100.0)


def test_components_regularizers_and_hooks_are_removed(tmp_path) -> None:
    from polysdk.regularize import ActivationL1

    model, loader, opt, _ = _setup()
    log: list[str] = []
    reg = ConstantReg()
    l1 = ActivationL1(model, "1", lam=1e-3)
    res = fit(model, loader, epochs=1, optimizer=opt,
              loss_fn=nn.functional.cross_entropy, progress=False,
              components=[Counting(log, "a"), Ctx(log)], regularizers=[reg, l1])
    assert log == ["attach a", "enter", "exit", "detach a"]
    assert res.history[0]["loss"] > 100                      # the constant term was added
    assert len(reg.labels) == 6 and reg.labels[0].shape == (16,)
    assert not model[1]._forward_hooks                        # l1 detached
    log.clear()
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, loader, epochs=1, optimizer=opt, progress=False,
            loss_fn=lambda o, y: (_ for _ in ()).throw(RuntimeError("boom")),
            components=[Counting(log, "a")], regularizers=[l1])
    assert log == ["attach a", "detach a"] and not model[1]._forward_hooks
    with pytest.raises(ConfigError, match="neither a component"):
        fit(model, loader, epochs=1, optimizer=opt, loss_fn=nn.functional.cross_entropy,
            components=[object()], progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        fit(model, loader, epochs=-1, optimizer=opt, loss_fn=nn.functional.cross_entropy)


def test_dict_batches() -> None:
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, inputs):
            return self.lin(inputs)

    torch.manual_seed(0)
    model = KW()
    batches = [{"inputs": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}] * 3
    res = fit(model, batches, epochs=2, optimizer=torch.optim.SGD(model.parameters(), 0.1),
              loss_fn=nn.functional.cross_entropy, progress=False)
    assert res.history[1]["loss"] < res.history[0]["loss"]
