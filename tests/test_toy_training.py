"""Toy models: sampling, embedding, tasks, gradients, LAMB + schedule, batching."""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pytest
import torch
import torch_optimizer

from polysdk.errors import ConfigError
from polysdk.models.toy import (
    FeatureSampler, ToyConfig, ToyModels, apply_nonlinearity, feature_probabilities,
    instance_generator, make_embedding, nonlinearity_grad, sample_features,
)
from polysdk.train import (
    BatchedLamb, FlatParams, checkpoint_steps, cyclic_cosine_factors, plan_chunks,
    train_toy_models,
)
from polysdk.train._group import InstanceGroup, _step_function, toy_step
from polysdk.train.trainer import _DATA_STREAM, _concatenate, _resolve_workers, _WorkSharing

TINY = dict(N=24, m=6, k=32, log2_batch_size=5, log2_training_steps=5)


# ----------------------------------------------------------------------------- sampling
def test_equal_probabilities() -> None:
    p = feature_probabilities(10, 0.125, "equal")
    assert torch.equal(p, torch.full((10,), 0.125, dtype=torch.float64))


def test_power_law_probabilities_sum_and_cap() -> None:
    N, eps = 512, 1 / 64
    p = feature_probabilities(N, eps, "power-law")
    raw = np.arange(1, N + 1, dtype=float) ** -1.1
    expected = np.minimum(raw * N * eps / raw.sum(), 1.0)
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)
    # at the paper's sizes the first feature is capped at 1: the sum falls below N * eps
    assert float(p[0]) == 1.0 and float(p[1]) < 1.0
    assert float(p.sum()) < N * eps
    assert torch.all(p[1:] <= p[:-1])
    # with a small eps nothing is capped and the sum is exactly N * eps
    q = feature_probabilities(N, 1 / 1024, "power_law")
    assert float(q.max()) < 1.0 and float(q.sum()) == pytest.approx(N / 1024, rel=1e-12)


def test_sampled_density_and_range() -> None:
    probs = torch.stack([torch.full((40,), 0.1), torch.full((40,), 0.5)]).float()
    gens = [instance_generator(3, _DATA_STREAM), instance_generator(4, _DATA_STREAM)]
    v = sample_features(gens, probs, 4000)
    assert v.shape == (2, 4000, 40)
    assert float(v.min()) >= 0 and float(v.max()) < 1
    density = (v > 0).float().mean((1, 2))
    np.testing.assert_allclose(density.numpy(), [0.1, 0.5], atol=0.01)
    # non-zero values are uniform on [0, 1): mean 1/2
    assert float(v[1][v[1] > 0].mean()) == pytest.approx(0.5, abs=0.01)


def test_instance_stream_independent_of_batch() -> None:
    probs = torch.full((3, 16), 0.3)
    gens = [instance_generator(s, _DATA_STREAM) for s in (5, 6, 7)]
    together = sample_features(gens, probs, 8).clone()
    alone = sample_features([instance_generator(6, _DATA_STREAM)], probs[:1], 8)
    assert torch.equal(together[1], alone[0])


def test_feature_sampler_draws_what_sample_features_draws() -> None:
    probs = torch.stack([torch.full((16,), 0.3), torch.full((16,), 0.7)])
    sampler = FeatureSampler([instance_generator(s, _DATA_STREAM) for s in (1, 2)], probs, 8)
    gens = [instance_generator(s, _DATA_STREAM) for s in (1, 2)]
    for _ in range(3):   # step after step, the same stream
        assert torch.equal(sampler.draw(), sample_features(gens, probs, 8))
    # draws=2: per instance, its first draw minus its second, from its own generator
    pair = FeatureSampler([instance_generator(s, _DATA_STREAM) for s in (1, 2)], probs, 8,
                          draws=2).draw()
    for i, seed in enumerate((1, 2)):
        gen = instance_generator(seed, _DATA_STREAM)
        first = sample_features([gen], probs[i:i + 1], 8).clone()
        assert torch.equal(pair[i], (first - sample_features([gen], probs[i:i + 1], 8))[0])
    with pytest.raises(ConfigError, match="one generator per row"):
        FeatureSampler(gens[:1], probs, 8)
    with pytest.raises(ConfigError, match="draws=3"):
        FeatureSampler(gens, probs, 8, draws=3)


def test_embedding_unit_columns_and_deterministic() -> None:
    E = make_embedding(50, 8, torch.Generator().manual_seed(0))
    assert E.shape == (8, 50)
    np.testing.assert_allclose(E.norm(dim=0).numpy(), np.ones(50), atol=1e-6)
    E2 = make_embedding(50, 8, torch.Generator().manual_seed(0))
    assert torch.equal(E, E2)
    # the rows of u (columns of E) come from an orthonormal basis: E E^T = (N/m)-ish scaled
    # identity is not guaranteed after row normalisation, but the rank is m
    assert int(torch.linalg.matrix_rank(E)) == 8


# ----------------------------------------------------------------------------- config
def test_config_aliases_and_errors() -> None:
    c = ToyConfig(task="random_proj", sample_kind="power-law", nonlinearity="gelu")
    assert (c.task, c.sample_kind, c.nonlinearity, c.out_dim) == ("re-projector",
                                                                    "power_law", "GeLU", 64)
    with pytest.raises(ConfigError, match="task='bogus'"):
        ToyConfig(task="bogus")
    with pytest.raises(ConfigError, match="eps"):
        ToyConfig(eps=0)


# ----------------------------------------------------------------------------- model math
@pytest.mark.parametrize("name", ["ReLU", "GeLU", "SoLU"])
def test_nonlinearity_grad_matches_autograd(name: str) -> None:
    h = torch.linspace(-3, 2, 101, dtype=torch.float64, requires_grad=True)
    apply_nonlinearity(name, h).sum().backward()
    np.testing.assert_allclose(nonlinearity_grad(name, h.detach()).numpy(), h.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    ref = {"ReLU": torch.relu, "GeLU": torch.nn.functional.gelu,
           "SoLU": lambda x: x * torch.exp(x)}[name]
    assert torch.allclose(apply_nonlinearity(name, h.detach()), ref(h.detach()))


def test_default_init_bounds_and_bias_offset() -> None:
    cfg = ToyConfig(**TINY, initial_bias=-1.0)
    models = ToyModels.init([cfg, cfg.replace(initial_bias=0.0)], seeds=[1, 1])
    b = 1 / math.sqrt(cfg.m)
    assert float(models.W1.abs().max()) <= b
    assert float(models.W2.abs().max()) <= 1 / math.sqrt(cfg.k)
    # same seed: identical except the offset
    assert torch.allclose(models.b1[0] + 1.0, models.b1[1])
    assert torch.equal(models.W1[0], models.W1[1])


def test_single_feature_activations_match_sequential() -> None:
    models = ToyModels.init([ToyConfig(**TINY, nonlinearity="GeLU")], seeds=[2])
    seq = models.to_sequential(0)
    ref = seq[:2](models.embed[0].T).T
    assert torch.allclose(models.single_feature_activations()[0], ref, atol=1e-6)


# ----------------------------------------------------------------------------- schedule
def test_cyclic_schedule_matches_torch_and_key_values() -> None:
    f = cyclic_cosine_factors(1100)
    assert f[0] == 1.0 and f[512] == pytest.approx(0.0, abs=1e-15)
    assert f[1024] == pytest.approx(1.0, abs=1e-12)
    assert cyclic_cosine_factors(1537)[1536] == pytest.approx(0, abs=1e-12)
    assert f[256] == pytest.approx(0.5, abs=1e-12)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.03)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 ** 9, eta_min=0)
    lrs = []
    for _ in range(1100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(0.03 * f, lrs, rtol=0, atol=1e-15)


def test_checkpoint_steps() -> None:
    assert checkpoint_steps(1024).tolist() == [2 ** j - 1 for j in range(11)]
    assert checkpoint_steps(1).tolist() == [0]


# ----------------------------------------------------------------------------- LAMB
def test_batched_lamb_matches_torch_optimizer_per_instance() -> None:
    K, shapes = 3, {"w": (5, 4), "b": (5,)}
    flat = FlatParams(K, shapes)
    g = torch.Generator().manual_seed(0)
    flat.data.copy_(torch.randn(flat.data.shape, generator=g) * 3)   # |w| > 10 in some: clamp
    flat.view(flat.data, "b")[1].zero_()                              # a zero-norm tensor
    refs = [[torch.nn.Parameter(flat[n][i].clone()) for n in shapes] for i in range(K)]
    opts = [torch_optimizer.Lamb(ps, lr=lr) for ps, lr in zip(refs, (1e-3, 1e-2, 3e-2))]
    lamb = BatchedLamb(flat)
    for _ in range(6):
        grad = torch.randn(flat.data.shape, generator=g)
        for i in range(K):
            for n, p in zip(shapes, refs[i]):
                p.grad = flat.view(grad, n)[i].clone()
            opts[i].step()
        lamb.step(grad, torch.tensor([1e-3, 1e-2, 3e-2]))
    for i in range(K):
        for n, p in zip(shapes, refs[i]):
            torch.testing.assert_close(flat[n][i], p.detach(), rtol=1e-5, atol=1e-6)


def _reference_train(cfg: ToyConfig, seed: int, steps_check: int | None = None
                     ) -> torch.nn.Sequential:
    """The original's loop: nn.Sequential + torch_optimizer.Lamb + CosineAnnealingLR."""
    init = ToyModels.init([cfg], [seed])
    model = init.to_sequential(0)
    opt = torch_optimizer.Lamb(model.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 ** 9, eta_min=0)
    gen = instance_generator(seed, _DATA_STREAM)
    scale = 0.5 if cfg.task == "abs" else 1.0
    p = feature_probabilities(cfg.N, cfg.eps * scale, cfg.sample_kind).float()[None]
    B, T = cfg.batch_size, cfg.training_steps
    for i in range(T):
        opt.zero_grad()
        v = sample_features([gen], p, B)[0].clone()
        if cfg.task == "abs":
            v = v - sample_features([gen], p, B)[0]
            target = v.abs()
        elif cfg.task == "re-projector":
            target = v @ init.target_embed[0].T
        else:
            target = v
        a = model[1](model[0](v @ init.embed[0].T))
        loss = ((model[2](a) - target) ** 2).sum() / B + cfg.reg * a.abs().sum() / B
        loss.backward()
        opt.step()
        sched.step()
        if i < T / 2:
            state = model.state_dict()
            state["0.bias"] *= (1 - cfg.decay * cfg.learning_rate)
            model.load_state_dict(state)
    return model


@pytest.mark.parametrize("over", [
    dict(nonlinearity="ReLU", task="decoder", decay=0.03, initial_bias=-1.0),
    dict(nonlinearity="GeLU", task="abs", reg=0.01, sample_kind="power_law", decay=0.1),
    dict(nonlinearity="SoLU", task="re-projector", learning_rate=0.01),
])
def test_trainer_matches_original_loop(over: dict) -> None:
    cfg = ToyConfig(**{**TINY, "log2_training_steps": 6, **over})
    res = train_toy_models([cfg], [11])
    ref = _reference_train(cfg, 11)
    torch.testing.assert_close(res.models.W1[0], ref[0].weight.detach(), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(res.models.b1[0], ref[0].bias.detach(), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(res.models.W2[0], ref[2].weight.detach(), rtol=1e-4, atol=2e-5)


def test_batched_instance_equals_alone() -> None:
    cfgs = [ToyConfig(**TINY, learning_rate=lr, decay=d, initial_bias=b, eps=e)
            for lr, d, b, e in [(1e-3, 0, 0, 1 / 8), (1e-2, 0.03, -1, 1 / 16),
                                (3e-2, 0.01, -0.5, 1 / 4), (5e-3, 0, 0.5, 1 / 8)]]
    seeds = [0, 1, 2, 0]
    together = train_toy_models(cfgs, seeds, workers=1)       # one batched computation
    for i in (1, 3):
        alone = train_toy_models([cfgs[i]], [seeds[i]])
        torch.testing.assert_close(together.models.W1[i], alone.models.W1[0], rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(together.models.W2[i], alone.models.W2[0], rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(together.losses[i], alone.losses[0], rtol=1e-4)
        np.testing.assert_allclose(together.checkpoint_activations[i],
                                   alone.checkpoint_activations[0], rtol=1e-3, atol=1e-5)


def _assert_same_training(got: object, want: object) -> None:
    for name in ("W1", "b1", "W2", "embed"):
        torch.testing.assert_close(getattr(got.models, name), getattr(want.models, name),
                                   rtol=1e-5, atol=1e-6, msg=name)
    np.testing.assert_allclose(got.losses, want.losses, rtol=1e-5)
    np.testing.assert_allclose(got.checkpoint_activations, want.checkpoint_activations,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.checkpoint_mean_bias, want.checkpoint_mean_bias,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("over", [
    dict(),
    dict(task="abs", nonlinearity="GeLU", sample_kind="power_law"),
    dict(task="re-projector", nonlinearity="SoLU", reg=0.01),
])
def test_workers_split_instances_with_the_same_bits(over: dict) -> None:
    cfgs = [ToyConfig(**TINY, **over, learning_rate=lr, decay=0.03, initial_bias=-0.5)
            for lr in (1e-3, 3e-3, 1e-2, 3e-2, 5e-3)]
    seeds = [0, 1, 2, 3, 0]
    threads = torch.get_num_threads()
    together = train_toy_models(cfgs, seeds, workers=1)
    split = train_toy_models(cfgs, seeds, workers=3)          # groups of 2, 2 and 1
    assert torch.get_num_threads() == threads                  # restored after the workers
    assert split.configs == cfgs and split.seeds == seeds     # instance order kept
    # the same arithmetic per instance; MKL may block a matmul differently for another
    # number of instances (seen with the re-projector's m-wide output), so allow rounding
    _assert_same_training(split, together)
    if over.get("task") == "re-projector":
        assert torch.equal(split.models.target_embed, together.models.target_embed)


def test_a_failing_worker_stops_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ToyConfig(**{**TINY, "log2_training_steps": 12})
    real = ToyModels.single_feature_activations

    def fails_in_second_worker(self: ToyModels) -> torch.Tensor:   # at the first checkpoint
        if threading.current_thread().name.endswith("_1"):
            raise RuntimeError("boom in worker 1")
        return real(self)

    monkeypatch.setattr(ToyModels, "single_feature_activations", fails_in_second_worker)
    steps: list[int] = []                  # reported by the first worker
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom in worker 1"):
        train_toy_models([cfg] * 4, [0, 1, 2, 3], workers=2, step_callback=steps.append)
    assert torch.get_num_threads() == threads
    assert steps and steps[-1] < cfg.training_steps - 1     # it stopped, did not finish


def test_split_group_goes_on_where_it_was() -> None:
    """Splitting mid-run moves parameters, LAMB moments, generators and logs along."""
    cfgs = [ToyConfig(**TINY, learning_rate=lr, decay=0.03, initial_bias=-0.5)
            for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    whole = InstanceGroup(cfgs, [0, 1, 2, 3], range(4), "cpu")
    while not whole.done:
        whole.advance()
    parent = InstanceGroup(cfgs, [0, 1, 2, 3], range(4), "cpu")
    for _ in range(7):                               # past checkpoints 0, 1, 3 and a loss log
        parent.advance()
    given, kept = parent.split([1, 3])
    assert given.indices == [1, 3] and kept.indices == [0, 2] and given.step == 7
    for g in (given, kept):
        while not g.done:
            g.advance()
    ref = whole.result()
    for group, rows in ((given, [1, 3]), (kept, [0, 2])):
        got = group.result()
        torch.testing.assert_close(got.models.W1, ref.models.W1[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.models.b1, ref.models.b1[rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.losses, ref.losses[rows], rtol=1e-5)
        np.testing.assert_allclose(got.checkpoint_activations, ref.checkpoint_activations[rows],
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="both sides"):
        parent.split([0, 1, 2, 3])


def test_work_sharing_splits_a_wanted_group_and_keeps_the_order() -> None:
    cfgs = [ToyConfig(**{**TINY, "log2_training_steps": 7}, learning_rate=lr)
            for lr in (1e-3, 3e-3, 1e-2, 3e-2, 5e-3)]
    seeds = [4, 3, 2, 1, 0]
    group = InstanceGroup(cfgs, seeds, range(5), "cpu")
    steps: list[int] = []
    sharing = _WorkSharing([group], bar=type("NoBar", (), {"update": lambda *a: None})(),
                           step_callback=steps.append)
    sharing.wanted.add(group)           # as if an idle worker asked: split at the next step
    sharing.work()                      # one worker: trains its half, then the half it gave
    assert len(sharing.finished) == 2 and steps == list(range(cfgs[0].training_steps))
    parts = sorted(sharing.finished, key=lambda g: g.indices[0])
    assert [g.indices for g in parts] == [[0, 1], [2, 3, 4]]
    _assert_same_training(_concatenate([g.result() for g in parts]),
                          train_toy_models(cfgs, seeds, workers=1))


@pytest.mark.parametrize("over", [
    dict(), dict(task="abs", nonlinearity="GeLU", reg=0.01),
    dict(task="re-projector", nonlinearity="SoLU"),
])
def test_compiled_step_equals_the_python_step(over: dict) -> None:
    step = _step_function(torch.device("cpu"))
    if sys.version_info < (3, 14):   # TorchScript compiles it here (the fast path is used)
        assert isinstance(step, torch.jit.ScriptFunction)
    cfgs = [ToyConfig(**TINY, **over, learning_rate=lr, decay=0.03, initial_bias=-0.5)
            for lr in (1e-3, 3e-2)]
    compiled = InstanceGroup(cfgs, [0, 1], range(2), "cpu")
    python = InstanceGroup(cfgs, [0, 1], range(2), "cpu")
    python._step = toy_step
    for _ in range(cfgs[0].training_steps):
        compiled.advance()
        python.advance()
    a, b = compiled.result(), python.result()
    for name in ("W1", "b1", "W2"):                      # the same operations: same bits
        assert torch.equal(getattr(a.models, name), getattr(b.models, name)), name
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.checkpoint_activations, b.checkpoint_activations)


def test_workers_argument_checked() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _resolve_workers(None, 1, cpu) == 1
    assert _resolve_workers(None, 16, cpu) == min(16, torch.get_num_threads())
    assert _resolve_workers(8, 3, cpu) == 3                  # never more than instances
    assert _resolve_workers(None, 16, cuda) == 1             # GPUs batch every instance
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigError, match="workers="):
            _resolve_workers(bad, 4, cpu)
    with pytest.raises(ConfigError, match="on cuda"):
        _resolve_workers(2, 4, cuda)


def test_train_result_shapes_and_logging() -> None:
    cfg = ToyConfig(**TINY)
    res = train_toy_models([cfg, cfg.replace(decay=0.1)], [0, 0])
    T = cfg.training_steps
    assert res.loss_steps.tolist() == list(range(0, T, 16))
    assert res.losses.shape == (2, T // 16) and np.all(res.losses > 0)
    assert res.checkpoint_steps.tolist() == [0, 1, 3, 7, 15, 31]
    assert res.checkpoint_activations.shape == (2, 6, cfg.k, cfg.N)
    # the mean bias is the mean of b1 at the last checkpoint = final model
    assert res.checkpoint_mean_bias[1, -1] == pytest.approx(float(res.models.b1[1].mean()))
    np.testing.assert_allclose(res.checkpoint_activations[:, -1],
                               res.models.single_feature_activations().numpy(), atol=1e-6)


def test_task_targets() -> None:
    """Loss at step 0 equals the hand-computed loss of each task on the same batch."""
    for task in ("decoder", "re-projector", "abs"):
        cfg = ToyConfig(**TINY, task=task)
        res = train_toy_models([cfg], [4])
        init = ToyModels.init([cfg], [4])
        gen = instance_generator(4, _DATA_STREAM)
        p = feature_probabilities(cfg.N, cfg.eps * (0.5 if task == "abs" else 1),
                                  "equal").float()[None]
        v = sample_features([gen], p, cfg.batch_size)[0].clone()
        if task == "abs":
            v = v - sample_features([gen], p, cfg.batch_size)[0]
        target = {"decoder": v, "abs": v.abs(),
                  "re-projector": v @ init.target_embed[0].T if init.target_embed is not None
                  else None}[task]
        with torch.no_grad():
            out = init.to_sequential(0)(v @ init.embed[0].T)
        expected = float(((out - target) ** 2).sum() / cfg.batch_size)
        assert res.losses[0, 0] == pytest.approx(expected, rel=1e-5), task


def test_plan_chunks_groups_shapes_and_sizes() -> None:
    cfgs = [ToyConfig(**{**TINY, "k": k}) for k in (8, 16, 8, 8, 16)]
    assert plan_chunks(cfgs, chunk_size=2) == [[0, 2], [3], [1, 4]]
    small = [ToyConfig(N=64, m=8, k=128, log2_batch_size=7)] * 16
    assert plan_chunks(small) == [list(range(16))]          # small models: one batch
    paper = [ToyConfig()] * 3                                 # paper sizes on CPU: loop
    assert plan_chunks(paper, "cpu") == [[0], [1], [2]]
    with pytest.raises(ConfigError):
        plan_chunks(cfgs, chunk_size=0)
    with pytest.raises(ConfigError, match="share"):
        ToyModels.init([cfgs[0], cfgs[1]], [0, 0])


@pytest.mark.gpu
def test_batched_on_cuda_matches_cpu_alone() -> None:
    cfgs = [ToyConfig(**TINY, learning_rate=lr) for lr in (1e-3, 1e-2)]
    gpu = train_toy_models(cfgs, [0, 1], device="cuda")
    cpu = train_toy_models(cfgs[1:], [1], device="cpu")
    # the data streams differ between devices (CUDA generators); the initial weights and
    # embedding do not, and the training statistics agree
    torch.testing.assert_close(gpu.models.embed[1].cpu(), cpu.models.embed[0])
    assert abs(gpu.losses[1, -1] - cpu.losses[0, -1]) < 0.5 * cpu.losses[0, 0]
