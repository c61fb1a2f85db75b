"""Interventions at chosen positions: exactly those tokens change, every other one
keeps its value (checked entry by entry against a manual edit)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polysdk.errors import ConfigError, SiteError
from polysdk.intervene import Ablate, Clamp, Patch, Steer

B, L, U = 3, 6, 4


@pytest.fixture()
def lin() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, U))  # on (sample, position, 5): dims (sample, position, unit)


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(B, L, 5, generator=torch.Generator().manual_seed(1))


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(sample, position) entries where any unit differs."""
    return (a != b).any(-1)


def test_steer_at_one_position_and_at_a_list(lin, x):
    base = lin(x).detach()
    d = torch.arange(1.0, U + 1)
    with Steer(lin, "0", d, scale=2.0, positions=2):
        out = lin(x).detach()
    want = base.clone()
    want[:, 2] += 2.0 * d
    assert torch.equal(out, want)
    with Steer(lin, "0", d, positions=[0, -1]):
        out = lin(x).detach()
    expect = torch.zeros(B, L, dtype=torch.bool)
    expect[:, [0, L - 1]] = True
    assert torch.equal(changed(out, base), expect)
    assert torch.equal(out[:, 1:-1], base[:, 1:-1])  # untouched, bit for bit
    assert torch.allclose(out[:, [0, -1]], base[:, [0, -1]] + d)


def test_a_boolean_sample_position_mask_and_units_together(lin, x):
    base = lin(x).detach()
    where = torch.zeros(B, L, dtype=torch.bool)
    where[0, 1] = where[1, 4] = where[2, 0] = where[2, 5] = True
    with Ablate(lin, "0", units=[1, 3], positions=where):
        out = lin(x).detach()
    want = base.clone()
    for s, p in where.nonzero().tolist():
        want[s, p, [1, 3]] = 0.0
    assert torch.equal(out, want)
    with Clamp(lin, "0", 7.0, positions=where[0]):  # a (position,) mask: the same in every sample
        out = lin(x).detach()
    assert torch.equal(changed(out, base), where[0].expand(B, L))
    assert bool((out[:, 1] == 7.0).all())


def test_patch_only_chosen_tokens(lin, x):
    clean = torch.randn(B, L, 5, generator=torch.Generator().manual_seed(2))
    with Patch(lin, "0", input=clean, positions=[3]):
        out = lin(x).detach()
    want = lin(x).detach()
    want[:, 3] = lin(clean).detach()[:, 3]
    assert torch.equal(out, want)


def test_positions_count_real_tokens_with_an_attention_mask(lin, x):
    base = lin(x).detach()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0],    # right padded: 3 real tokens
                         [0, 0, 1, 1, 1, 1],    # left padded: 4 real tokens
                         [1, 1, 1, 1, 1, 1]])
    d = torch.ones(U)
    with Steer(lin, "0", d, positions=[0, -1], attention_mask=mask):
        out = lin(x).detach()
    expect = torch.zeros(B, L, dtype=torch.bool)
    expect[0, [0, 2]] = expect[1, [2, 5]] = expect[2, [0, 5]] = True
    assert torch.equal(changed(out, base), expect)  # never a padded position
    assert torch.allclose(out[expect], base[expect] + d)
    with Steer(lin, "0", d, positions=3, attention_mask=mask), pytest.raises(SiteError, match="does not exist"):
        lin(x)  # the first text has no 4th real token


def test_position_errors(lin, x):
    mlp = nn.Sequential(nn.Linear(5, U))
    with Steer(mlp, "0", torch.ones(U), positions=0), pytest.raises(SiteError, match="'position' dim"):
        mlp(torch.randn(2, 5))  # (sample, unit): no positions to choose
    with Steer(lin, "0", torch.ones(U), positions=[L]), pytest.raises(SiteError, match="out of range"):
        lin(x)
    with Steer(lin, "0", torch.ones(U), positions=[0.5]), pytest.raises(ConfigError, match="ints"):
        lin(x)
    with Steer(lin, "0", torch.ones(U), positions=torch.ones(2, 2, dtype=torch.bool)), \
            pytest.raises(SiteError, match="boolean positions"):
        lin(x)
    with pytest.raises(ConfigError, match="not among"):
        Steer(lin, "0", torch.ones(U), positions={"9": 0})
    # named dims: positions=1 on axis 1 of a layout given by name
    base = lin(x).detach()
    with Steer(lin, "0", torch.ones(U), positions=1, dims=("sample", "position", "unit")):
        assert torch.equal(changed(lin(x).detach(), base), torch.arange(L).eq(1).expand(B, L))


def test_steer_the_last_real_token_of_a_padded_bert_batch():
    """On a Hugging Face BERT, steering each text's last real token in a padded batch
    (right or left) equals steering each text alone, unpadded; pads are never edited."""
    import transformers
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, attn_implementation="eager")
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).double().eval()
    texts = [[3, 9, 4], [7, 1, 22, 8, 30], [5, 5, 12, 6]]
    site, d = "encoder.layer.0.output", torch.linspace(-1.0, 1.0, 8).double()
    with torch.no_grad():
        alone = []
        for t in texts:
            with Steer(bert, site, d, scale=3.0, positions=-1):
                alone.append(bert(input_ids=torch.tensor([t])).last_hidden_state[0])
        plain = [bert(input_ids=torch.tensor([t])).last_hidden_state[0] for t in texts]
        for side in ("right", "left"):
            longest = max(map(len, texts))
            ids = torch.zeros(len(texts), longest, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, t in enumerate(texts):
                where = slice(0, len(t)) if side == "right" else slice(longest - len(t), longest)
                ids[i, where], mask[i, where] = torch.tensor(t), 1
            batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
            seen = {}

            def record(m, a, o):
                seen["o"] = o.clone()

            hook = bert.encoder.layer[0].output.register_forward_hook(record)
            try:
                bert(**batch)
                before = seen["o"]
            finally:
                hook.remove()
            with Steer(bert, site, d, scale=3.0, positions=-1, attention_mask=mask):
                hook = bert.encoder.layer[0].output.register_forward_hook(record)  # runs after the steer
                try:
                    out = bert(**batch).last_hidden_state
                finally:
                    hook.remove()
            after = seen["o"]
            last = mask.cumsum(1).argmax(1)  # the index of each text's last real token
            edited = torch.zeros_like(mask, dtype=torch.bool)
            edited[torch.arange(len(texts)), last] = True
            assert torch.equal(changed(after, before), edited)  # one token per text, never a pad
            for i, t in enumerate(texts):
                real = mask[i].bool()
                torch.testing.assert_close(out[i][real], alone[i], rtol=1e-10, atol=1e-10)
                assert not torch.allclose(out[i][real], plain[i])  # the steer did reach the output
