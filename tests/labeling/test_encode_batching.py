"""Encoder batching of the label stage: the cost-model split of length-sorted segments, and its outputs."""

import itertools

import numpy as np
import pytest

from pipeline.labeling.encode import length_batches


def cost(lengths, batches, overhead):
    return sum(max(lengths[i] for i in b) * len(b) + overhead for b in batches)


def check_partition(lengths, batches, max_items, max_samples):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every segment exactly once
    for b in batches:
        assert len(b) <= max_items
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= max_samples
    # batches are runs of the length order: no batch mixes lengths another batch lies between
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("seed", range(20))
def test_cost_split_is_optimal_on_small_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    lengths = [int(x) for x in rng.integers(1, 100, n)]
    max_items, max_samples, overhead = int(rng.integers(1, 6)), int(rng.integers(50, 400)), float(rng.integers(0, 60))
    got = length_batches(lengths, max_items, max_samples, overhead)
    check_partition(lengths, got, max_items, max_samples)
    # brute force over every split of the sorted order into contiguous runs within the limits
    order = sorted(range(n), key=lambda i: lengths[i])
    best = np.inf
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        bs = [order[a:b] for a, b in zip(bounds, bounds[1:])]
        if all(len(b) <= max_items and (len(b) == 1 or max(lengths[i] for i in b) * len(b) <= max_samples) for b in bs):
            best = min(best, cost(lengths, bs, overhead))
    assert cost(lengths, got, overhead) == pytest.approx(best)


def test_cost_split_separates_short_from_long_and_fills_alike():
    short, long_ = [16000] * 6, [160000] * 2  # six 1 s segments, two 10 s ones, interleaved
    lengths = [short[0], long_[0], short[1], short[2], long_[1], short[3], short[4], short[5]]
    greedy = length_batches(lengths, 32, 10**9)
    assert len(greedy) == 1  # one batch: every 1 s segment padded to 10 s
    split = length_batches(lengths, 32, 10**9, overhead=16000.0)
    assert sorted(sorted(b) for b in split) == [[0, 2, 3, 5, 6, 7], [1, 4]]
    assert cost(lengths, split, 16000.0) < cost(lengths, greedy, 16000.0)
    # a huge per-call cost: as few calls as the limits allow
    assert len(length_batches(lengths, 4, 10**9, overhead=1e9)) == 2
    # an item over the sample budget still gets a batch (alone)
    assert length_batches([10, 500, 20], 8, 100, overhead=5.0)[-1] == [1]


def test_encode_prompts_same_for_any_batching(tmp_path):
    """The split changes which segments share an encoder call, never their prompts (masked real-length encoder)."""
    from emoq_model.bundle import save_bundle
    from emoq_model.config import demo_config_path, load_config
    from emoq_model.model import EmoQModel
    from pipeline.labeling.encode import EncodePrompts

    bundle = str(save_bundle(EmoQModel(load_config(demo_config_path())), tmp_path / "bundle"))
    stage = EncodePrompts(bundle)
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 9) / 16000
    waves = [
        (
            0.2 * np.sin(2 * np.pi * (150 + 40 * k) * t[: int(16000 * s)]) + 0.01 * rng.standard_normal(int(16000 * s))
        ).astype(np.float32)
        for k, s in enumerate([1.0, 8.5, 1.5, 2.0, 7.0, 1.2])
    ]
    groups = ["a", "a", "a", "b", "b", "b"]
    stage.overhead = None
    one_call = stage.encode(waves, [None] * 6, groups)
    stage.overhead = 16000.0
    assert len(length_batches([len(w) for w in waves], stage.max_items, stage.max_samples, stage.overhead)) > 1
    split = stage.encode(waves, [None] * 6, groups)
    for a, b in zip(one_call, split):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("stats_frames", [False, True])
def test_encode_prompts_two_pass_equals_held(tmp_path, stats_frames):
    """Per-speaker normalisation over a block larger than ``max_held_seconds``: statistics in a first encoder
    pass, then normalise + Former batch by batch; the prompts equal those of holding every segment's states (with
    the channel-statistics frames too, ``former.stats_frames``)."""
    from emoq_model.bundle import save_bundle
    from emoq_model.config import demo_config_path, load_config
    from emoq_model.features import FeatureNorm, GroupStats
    from emoq_model.model import EmoQModel, encoder_dims
    from pipeline.labeling.encode import EncodePrompts

    cfg = load_config(demo_config_path(), [f"former.stats_frames={str(stats_frames).lower()}"])
    bundle = str(save_bundle(EmoQModel(cfg), tmp_path / "bundle"))
    stage = EncodePrompts(bundle, max_batch_segments=2)
    stage.norm = FeatureNorm("speaker", group_key="speaker", min_frames=100, stats_frames=stats_frames)
    if stats_frames:  # the training speakers' statistics, as a trained bundle carries them
        dim, n_layers = encoder_dims(cfg)
        shape = (n_layers, dim)
        stage.norm.global_stats = GroupStats(10**6, np.zeros(shape, np.float32), np.ones(shape, np.float32))
    rng = np.random.default_rng(1)
    waves = [
        (0.1 * rng.standard_normal(int(16000 * s)) * (1 + k % 3)).astype(np.float32)
        for k, s in enumerate([1.0, 2.5, 1.5, 0.8, 3.0, 1.2, 2.0])
    ]
    groups = ["rec1\x000", "rec1\x001", "rec1\x000", "rec2\x000", "rec1\x001", "rec2\x000", "rec1\x000"]
    stage.max_held_samples = 10**9
    held = stage.encode(waves, [None] * len(waves), groups)
    stage.max_held_samples = 0
    streamed = stage.encode(waves, [None] * len(waves), groups)
    for a, b in zip(held, streamed):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-4)
    # the normalisation did act: without it the prompts differ
    stage.norm = FeatureNorm("none")
    plain = stage.encode(waves, [None] * len(waves), groups)
    assert max(float((a - b).abs().max()) for a, b in zip(held, plain)) > 1e-3


def test_held_parts_keep_recordings_whole_within_budget():
    from pipeline.labeling.encode import held_parts

    owner = [0, 0, 1, 2, 2, 2, 3, 4]
    lengths = [30, 30, 50, 10, 10, 10, 200, 20]
    parts = held_parts(owner, lengths, 100)
    assert sorted(i for p in parts for i in p) == list(range(len(owner)))
    for p in parts:
        recs = {owner[i] for i in p}
        assert all(set(i for i, o in enumerate(owner) if o == r) <= set(p) for r in recs)  # recordings whole
        assert sum(lengths[i] for i in p) <= 100 or len(recs) == 1  # within budget, or one long recording
    assert [sorted({owner[i] for i in p}) for p in parts] == [[0], [1, 2], [3], [4]]


def test_encode_prompts_parts_of_a_block_same_prompts(tmp_path):
    """A block cut into parts of whole recordings (``max_held_seconds``) or encoded in two passes gives the prompts
    of holding it all at once: real WAV files through the prepare step and the stage's ``__call__``."""
    import pandas as pd
    import soundfile as sf

    from emoq_model.assets.speech_samples import asterisk_sounds_dir
    from emoq_model.bundle import save_bundle
    from emoq_model.config import demo_config_path, load_config
    from emoq_model.features import FeatureNorm
    from emoq_model.model import EmoQModel
    from pipeline.labeling.encode import EncodePrompts, held_parts
    from pipeline.labeling.prepare import PrepareConfig, prepare_batch
    from pipeline.labeling.sources import discover

    clips = sorted(asterisk_sounds_dir().glob("*.wav"))[:40]
    rows = []
    for r in range(3):  # three recordings of a few prompts each, with pauses between them (VAD segments)
        parts = []
        for p in clips[r * 6 : (r + 1) * 6]:
            x, rate = sf.read(p, dtype="float32")
            parts += [x, np.zeros(rate // 2, np.float32)]
        path = tmp_path / f"rec{r}.wav"
        sf.write(path, np.concatenate(parts), rate)
        rows.append({"recording_id": f"rec{r}", "path": str(path)})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    recs = [x.to_row() for x in discover([str(tmp_path / "m.csv")])]
    block = prepare_batch({k: np.array([r[k] for r in recs], dtype=object) for k in recs[0]}, PrepareConfig())
    assert all(len(o) > 2 for o in block["seg_offsets"])  # several segments per recording
    bundle = str(save_bundle(EmoQModel(load_config(demo_config_path())), tmp_path / "bundle"))
    stage = EncodePrompts(bundle)
    stage.norm = FeatureNorm("speaker", group_key="speaker", min_frames=100)
    owner = [r for r, o in enumerate(block["seg_offsets"]) for _ in range(len(o) - 1)]
    lengths = [int(n) for o in block["seg_offsets"] for n in np.diff(o)]
    two = sum(n for n, r in zip(lengths, owner) if r < 2) / stage.sample_rate + 0.01  # recordings 0 and 1
    assert [sorted(set(owner[i] for i in p)) for p in held_parts(owner, lengths, int(two * stage.sample_rate))] == [
        [0, 1],
        [2],
    ]
    outs = []
    for held_s in (1e6, two, 0.0):  # all at once; parts of two and one recordings; two passes per recording
        stage.max_held_samples = int(held_s * stage.sample_rate)
        outs.append(stage(dict(block)))
    for o in outs[1:]:
        for a, b in zip(outs[0]["prompt_embeds"], o["prompt_embeds"]):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
