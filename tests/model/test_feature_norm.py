"""Feature normalisation with statistics frames (FeatureNorm.stats_frames): what the frames hold, that every
representation (numpy or torch, stacked or not) gets the same ones, and the refusals."""

import numpy as np
import pytest
import torch

from emoq_model.features import FeatureNorm, GroupStats, compute_group_stats


def _items(layers=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(6):
        spk = "calm" if i < 3 else "angry"
        shift = 0.0 if spk == "calm" else 2.0  # the angry channel sits 2 units above the population everywhere
        out.append(
            {
                "utt_id": f"u{i}",
                "speaker": spk,
                "frames": rng.normal(shift, 1.0 + shift / 2, (layers, 30, 8)).astype("f4"),
            }
        )
    return out


def _global(layers=3):
    return GroupStats(10_000, np.zeros((layers, 8), np.float32), np.ones((layers, 8), np.float32))


def test_stats_frames_hold_the_channel_statistics_against_the_population():
    items = _items()
    norm = FeatureNorm("speaker", min_frames=1, stats_frames=True, global_stats=_global())
    out = norm.apply(items)
    stats = compute_group_stats(items, key="speaker")
    for it, o in zip(items, out):
        assert o["frames"].shape == (3, 32, 8)
        g = stats[it["speaker"]]
        mean, std = norm.effective(g)
        assert np.allclose(o["frames"][:, 0], mean, atol=1e-5)  # global mean 0, std 1: z = the mean itself
        assert np.allclose(o["frames"][:, 1], np.log(std), atol=1e-4)
        plain = FeatureNorm("speaker", min_frames=1).apply([it], {it["speaker"]: g})[0]["frames"]
        assert np.allclose(o["frames"][:, 2:], plain)  # the speech frames are normalised as without them
    # the two channels' normalised speech looks alike; their statistics frames tell them apart
    assert out[3]["frames"][:, 0].mean() > out[0]["frames"][:, 0].mean() + 1.5


def test_same_frames_from_numpy_torch_and_unstacked():
    items = _items()
    norm = FeatureNorm("speaker", min_frames=1, stats_frames=True, global_stats=_global())
    a = norm.apply(items)
    b = norm.apply([{**it, "frames": torch.from_numpy(it["frames"])} for it in items])
    for x, y in zip(a, b):
        assert torch.is_tensor(y["frames"]) and np.allclose(x["frames"], y["frames"].numpy())
    one = [{**it, "frames": it["frames"][0]} for it in _items(layers=1)]  # [T, D] frames, one layer
    c = FeatureNorm("speaker", min_frames=1, stats_frames=True, global_stats=_global(1)).apply(one)
    assert c[0]["frames"].shape == (32, 8)


def test_refusals():
    with pytest.raises(ValueError, match="per-speaker"):
        FeatureNorm("none", stats_frames=True)
    with pytest.raises(ValueError, match="global"):
        FeatureNorm("speaker", stats_frames=True).apply(_items())
