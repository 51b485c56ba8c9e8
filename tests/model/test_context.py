"""Conversation context (emoq_model.context): what it mixes, what it never mixes, and that fitting it on validation
turns recovers a real persistence and refuses a fake one."""

import json

import numpy as np
import pytest

from emoq_model.calibration import CALIBRATION_FILE, load_context, load_temperature
from emoq_model.context import ChannelContext, fit_context


def _channel_turns(n_channels=40, turns=12, noise=1.4, persistent=True, seed=0, k=4):
    """Channels of turns 8 s apart; each channel's true label persists (one label per channel) or is drawn per
    turn; the model's probabilities are softmax(onehot(true) * 1.0 + noise): a weak, noisy per-turn classifier."""
    rng = np.random.default_rng(seed)
    y, groups, start = [], [], []
    for c in range(n_channels):
        lab = rng.integers(k)
        for t in range(turns):
            y.append(lab if persistent else rng.integers(k))
            groups.append(f"call{c}/customer")
            start.append(8.0 * t)
    y = np.array(y)
    z = np.eye(k)[y] + rng.normal(0, noise, (len(y), k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    start = np.array(start)
    return p, y, groups, start, start + 3.0


def test_off_is_identity_and_groups_never_mix():
    p, _, groups, s, e = _channel_turns(n_channels=3, turns=4)
    assert np.array_equal(ChannelContext().apply(p, groups, s, e), p)
    c = ChannelContext(weight=2.0, tau_s=30.0)
    out = c.apply(p, groups, s, e)
    assert np.allclose(out.sum(1), 1.0)
    # each channel alone gives the same rows as all channels together: nothing crosses a channel
    for g in sorted(set(groups)):
        m = np.array([x == g for x in groups])
        assert np.allclose(c.apply(p[m], [g] * m.sum(), s[m], e[m]), out[m])
    # a channel of one segment is unchanged
    assert np.allclose(c.apply(p[:1], ["solo"], s[:1], e[:1]), p[:1])


def test_a_turn_cut_in_pieces_weighs_as_one():
    """Duration weighting: the same speech as one 3 s segment or three 1 s segments pulls a neighbour equally."""
    c = ChannelContext(weight=1.0, tau_s=1e6)
    angry, neutral = np.array([0.1, 0.1, 0.7, 0.1]), np.array([0.7, 0.1, 0.1, 0.1])
    whole = c.apply(np.stack([neutral, angry]), ["a", "a"], [0.0, 10.0], [3.0, 13.0])
    cut = c.apply(np.stack([neutral, angry, angry, angry]), ["a"] * 4, [0.0, 10.0, 11.0, 12.0], [3.0, 11.0, 12.0, 13.0])
    assert np.allclose(whole[0], cut[0])


def test_nearby_turns_weigh_more_than_distant_ones():
    c = ChannelContext(weight=1.0, tau_s=10.0)
    target, near, far = [0.4, 0.2, 0.2, 0.2], [0.05, 0.05, 0.85, 0.05], [0.05, 0.85, 0.05, 0.05]
    out = c.apply(np.array([target, near, far]), ["a"] * 3, [50.0, 55.0, 200.0], [52.0, 57.0, 202.0])
    assert out[0, 2] > out[0, 1]  # the neighbour 5 s away outweighs the one 150 s away


def test_fit_finds_persistence_and_helps_held_out_channels():
    p, y, g, s, e = _channel_turns(persistent=True, seed=0)
    ctx, grid = fit_context(p, y, g, s, e)
    assert ctx.active and len(grid) > 1
    p2, y2, g2, s2, e2 = _channel_turns(persistent=True, seed=1)  # other channels, same kind
    before = (p2.argmax(1) == y2).mean()
    after = (ctx.apply(p2, g2, s2, e2).argmax(1) == y2).mean()
    assert after > before + 0.1


def test_fit_stays_off_without_persistence():
    """Labels drawn independently per turn: context can only blur them, and the fit must not switch it on
    (or only so weakly that held-out accuracy does not drop)."""
    p, y, g, s, e = _channel_turns(persistent=False, seed=2, noise=0.6)
    ctx, _ = fit_context(p, y, g, s, e)
    p2, y2, g2, s2, e2 = _channel_turns(persistent=False, seed=3, noise=0.6)
    before = (p2.argmax(1) == y2).mean()
    assert (ctx.apply(p2, g2, s2, e2).argmax(1) == y2).mean() >= before - 0.02


def test_fit_without_times_is_off():
    p, y, g, s, e = _channel_turns(n_channels=4)
    ctx, grid = fit_context(p, y, g, np.full(len(s), np.nan), e)
    assert not ctx.active and grid == []


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        ChannelContext(weight=-1.0)
    with pytest.raises(ValueError):
        ChannelContext(weight=1.0, tau_s=0.0)


def test_bundle_round_trip(tmp_path):
    assert not load_context(tmp_path).active and load_temperature(tmp_path) == 1.0  # no calibration file
    (tmp_path / CALIBRATION_FILE).write_text(
        json.dumps({"temperature": 1.3, "context": {"weight": 0.5, "tau_s": 40.0, "grid": []}})
    )
    assert load_context(tmp_path) == ChannelContext(0.5, 40.0) and load_temperature(tmp_path) == 1.3
