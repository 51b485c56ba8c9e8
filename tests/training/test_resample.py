"""Channel-statistics resampling (pipeline/training/resample.py, ``train.stage*.stats_resample``)."""

import numpy as np
import pytest

from emoq_model import features as F
from emoq_model.config import demo_config_path, load_config
from pipeline.training.data import WorkerData
from pipeline.training.resample import ChannelResampler, skewed_subsets
from pipeline.training.settings import TrainSettings
from tests.training.test_data import LABELS, _cache


def _channel(n=12, seed=0):
    """Raw items of one channel: stacked [2, T, 8] frames whose level depends on the label (as emotion moves it)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        lab = LABELS[(i * 5) % 7 % 4]
        offset = LABELS.index(lab) * 0.7
        t = int(rng.integers(5, 30))
        frames = (rng.normal(size=(2, t, 8)) * (1 + 0.3 * offset) + offset).astype(np.float16)
        items.append({"utt_id": f"u{i:02d}", "label": lab, "norm_group": "call\x00A", "frames": frames})
    return items


def test_a_resampled_item_equals_normalising_its_raw_frames_by_the_subsets_statistics():
    """The affine map from the stored whole-channel normalisation gives what normalising the raw frames with the
    statistics of the subset (computed independently, from the subset's raw frames) gives, statistics frames too;
    small groups shrink towards the global statistics on both paths (min_frames)."""
    items = _channel()
    glob = F.compute_group_stats([{**it, "g": "all"} for it in _channel(40, seed=1)], key="g")["all"]
    norm = F.FeatureNorm("speaker", group_key="norm_group", stats_frames=True, global_stats=glob, min_frames=150)
    full = F.compute_group_stats(items, key="norm_group")
    stored = {it["utt_id"]: it for it in norm.apply(items, full)}
    utterances = {}
    for it in items:
        acc = F.StatsAccumulator()
        acc.add(it["frames"])
        utterances[it["utt_id"]] = acc
    groups = {it["utt_id"]: it["norm_group"] for it in items}
    labels = {it["utt_id"]: it["label"] for it in items}
    rs = ChannelResampler(norm, groups, labels, full, utterances, k=4, seed=3)
    assert len(rs) == 1 and len(rs.baselines["call\x00A"]) == 4
    raw = {it["utt_id"]: it for it in items}
    for b in rs.baselines["call\x00A"]:
        sub = F.compute_group_stats([raw[u] for u in b.utt_ids], key="norm_group")
        want = norm.apply(items, sub)
        for w in want:
            got = rs.renormalise(stored[w["utt_id"]]["frames"], b)
            assert got.shape == w["frames"].shape == (2, F.N_STATS_FRAMES + raw[w["utt_id"]]["frames"].shape[1], 8)
            np.testing.assert_allclose(got, w["frames"], rtol=1e-4, atol=1e-4)
    # and the subsets are not the whole channel: the baselines move
    assert max(float(np.abs(b.shift).max()) for b in rs.baselines["call\x00A"]) > 0.1


def test_skewed_subsets_are_seeded_label_skewed_and_within_size():
    ids = [f"u{i:03d}" for i in range(60)]
    labels = [LABELS[i % 4] for i in range(60)]  # a balanced channel
    a = skewed_subsets(ids, labels, 200, np.random.default_rng(0))
    assert a == skewed_subsets(ids, labels, 200, np.random.default_rng(0))
    lab = dict(zip(ids, labels))
    shares = []
    for s in a:
        assert len(set(s)) == len(s) and 18 <= len(s) <= 60 and set(s) <= set(ids)
        counts = np.array([sum(lab[u] == n for u in s) for n in LABELS])
        shares.append(counts.max() / counts.sum())
    # the channel's own top share is 0.25; small subsets of a Dirichlet(0.4) mix are far more one-sided
    small = [sh for s, sh in zip(a, shares) if len(s) <= 30]
    assert np.mean(small) > 0.5
    assert min(len(s) for s in skewed_subsets(ids[:3], labels[:3], 20, np.random.default_rng(1))) == 2


def test_workers_resample_the_same_baselines_and_only_when_asked(tmp_path):
    """WorkerData builds the baselines over whole channels, the same on every rank; ``p`` 0 draws nothing and
    changes nothing, ``p`` 1 re-normalises every item of a channel with baselines; without per-speaker
    normalisation it refuses."""
    root = _cache(tmp_path / "cache", n_recorded=16)
    small = ["former.num_queries=4", "former.num_layers=1", "former.stats_frames=true"]
    s = TrainSettings(
        features=str(root), storage_path=str(tmp_path / "runs"), name="t", feature_norm="speaker", norm_min_frames=1
    )
    assert WorkerData(s, load_config(demo_config_path(), small), 0, 2).resampler is None  # off: nothing built
    cfg = load_config(demo_config_path(), [*small, "train.stage1.stats_resample=0.5"])
    ranks = [WorkerData(s, cfg, r, 2) for r in range(2)]
    assert len(ranks[0].resampler) == 9  # 3 voices x (recorded + 2 speed copies), each a channel of 5-6 turns
    for g, alts in ranks[0].resampler.baselines.items():
        for a, b in zip(alts, ranks[1].resampler.baselines[g]):
            assert a.utt_ids == b.utt_ids
            np.testing.assert_array_equal(a.shift, b.shift)
    items = ranks[0].train[:6]
    rng = np.random.default_rng(0)
    assert ranks[0].resample(items, 0.0, rng) is items
    assert rng.random() == np.random.default_rng(0).random()  # p=0 drew nothing
    out = ranks[0].resample(items, 1.0, np.random.default_rng(1))
    rs, changed = ranks[0].resampler, 0
    for before, after in zip(items, out):
        assert after["utt_id"] == before["utt_id"] and after["label"] == before["label"]
        assert after["frames"].shape == before["frames"].shape and after["frames"].dtype == before["frames"].dtype
        alts = rs.baselines[rs.groups[before["utt_id"]]]
        assert any(np.array_equal(after["frames"], rs.renormalise(before["frames"], b)) for b in alts)
        changed += not np.array_equal(after["frames"], before["frames"])
    assert changed >= 4  # a subset may be the whole channel (5-6 turns here); most are not
    assert np.isfinite(np.stack([it["frames"].astype(np.float32).sum() for it in out])).all()
    with pytest.raises(ValueError, match="stats_resample must be in"):
        load_config(demo_config_path(), ["train.stage2.stats_resample=1.5"])
    none = TrainSettings(features=str(root), storage_path=str(tmp_path / "runs"), name="t", feature_norm="none")
    cfg_none = load_config(demo_config_path(), ["train.stage1.stats_resample=0.5"])
    with pytest.raises(ValueError, match="per-speaker feature normalisation"):
        WorkerData(none, cfg_none, 0, 1).resample(items, 0.5, rng)
