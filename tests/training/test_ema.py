"""The weight average that validation and export read (pipeline.training.ema)."""

import pytest
import torch

from pipeline.training.ema import WeightEMA


def _shift(m, fn) -> None:
    """Move every parameter of ``m`` in place (a stand-in for an optimizer step)."""
    with torch.no_grad():
        for p in m.parameters():
            fn(p)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_average_follows_the_warmed_up_decay():
    m = _model()
    ema = WeightEMA(m.named_parameters(), decay=0.9)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    expect = {n: p.detach().clone() for n, p in m.named_parameters()}
    for step in range(1, 30):
        opt.zero_grad()
        m(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
        ema.update()
        d = min(0.9, (1 + step) / (10 + step))
        for n, p in m.named_parameters():
            expect[n] = d * expect[n] + (1 - d) * p.detach()
    for n in expect:
        torch.testing.assert_close(ema.shadow[n], expect[n])
        assert not torch.equal(ema.shadow[n], dict(m.named_parameters())[n])  # an average, not the last step


def test_applied_swaps_in_the_average_and_restores_the_training_weights():
    m = _model()
    ema = WeightEMA(m.named_parameters(), decay=0.5)
    _shift(m, lambda p: p.add_(1.0))
    ema.update()
    raw = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(5, 3)
    with ema.applied():
        for n, p in m.named_parameters():
            torch.testing.assert_close(p.detach(), ema.shadow[n])
        y_avg = m(x)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.detach(), raw[n])
    assert not torch.allclose(y_avg, m(x))


def test_state_round_trip_and_mismatch():
    m = _model()
    a = WeightEMA(m.named_parameters(), decay=0.99)
    _shift(m, lambda p: p.mul_(2.0))
    a.update()
    b = WeightEMA(m.named_parameters(), decay=0.99)
    b.load_state_dict(a.state_dict())
    assert b.updates == 1
    for n in a.shadow:
        torch.testing.assert_close(a.shadow[n], b.shadow[n])
    other = WeightEMA(list(m.named_parameters())[:1], decay=0.99)
    with pytest.raises(KeyError, match="other parameters"):
        other.load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        WeightEMA(m.named_parameters(), decay=1.0)
