"""Metrics against hand-computed cases; IEMOCAP/MELD readers on fake layouts that mirror the real releases."""

import csv
import io
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import pipeline.recipes as ds
from emoq_model.metrics import classification_report, format_report, save_report

# ---------------------------------------------------------------------------------------------------------------
# metrics

L4 = ["neutral", "happy", "angry", "sad"]


def test_report_hand_computed_four_classes():
    y_true = ["neutral"] * 3 + ["happy"] * 2 + ["angry"] * 4 + ["sad"]
    y_pred = ["neutral", "happy", "neutral", "happy", "neutral", "angry", "angry", "sad", "angry", "sad"]
    r = classification_report(y_true, y_pred, L4)
    # confusion matrix counted by hand: rows true, cols predicted
    assert r["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]]
    assert r["n"] == 10
    assert r["wa"] == pytest.approx(7 / 10) and r["accuracy"] == r["wa"]
    # recalls 2/3, 1/2, 3/4, 1 -> UA = 35/48
    assert r["ua"] == pytest.approx(35 / 48)
    pc = r["per_class"]
    assert [pc[c]["recall"] for c in L4] == pytest.approx([2 / 3, 1 / 2, 3 / 4, 1.0])
    assert [pc[c]["precision"] for c in L4] == pytest.approx([2 / 3, 1 / 2, 1.0, 1 / 2])
    assert [pc[c]["f1"] for c in L4] == pytest.approx([2 / 3, 1 / 2, 6 / 7, 2 / 3])
    assert [pc[c]["support"] for c in L4] == [3, 2, 4, 1]
    assert r["macro_f1"] == pytest.approx(113 / 168)
    assert r["weighted_f1"] == pytest.approx(149 / 210)
    assert r["n_pred_outside_labels"] == 0
    assert "UA=0.7292" in format_report(r)


def test_ua_ignores_classes_absent_from_truth():
    r = classification_report(["a", "a", "b", "b"], ["a", "c", "b", "b"], ["a", "b", "c"])
    assert r["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert r["ua"] == pytest.approx((1 / 2 + 1) / 2)  # over a and b only, not /3
    assert r["classes_in_ua"] == ["a", "b"]
    c = r["per_class"]["c"]
    assert c["recall"] is None and c["support"] == 0 and c["precision"] == 0.0 and c["f1"] == 0.0
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)
    # a class neither true nor predicted has undefined scores and is left out of macro F1
    r2 = classification_report(["a", "b"], ["a", "b"], ["a", "b", "c"])
    assert r2["per_class"]["c"] == {"recall": None, "precision": None, "f1": None, "support": 0, "predicted": 0}
    assert r2["macro_f1"] == pytest.approx(1.0) and r2["ua"] == pytest.approx(1.0)


def test_int_labels_and_predictions_outside_labels():
    r = classification_report(np.array([0, 1, 1, 0]), ["x", "garbage", None, 0], ["x", "y"])
    assert r["wa"] == pytest.approx(2 / 4)
    assert r["n_pred_outside_labels"] == 2
    assert r["confusion_matrix"] == [[2, 0], [0, 0]]  # the two invalid predictions are in no column
    assert r["per_class"]["y"]["recall"] == 0.0 and r["per_class"]["y"]["precision"] is None
    assert r["ua"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside labels"):
        classification_report(["x", "z"], ["x", "x"], ["x", "y"])
    with pytest.raises(ValueError):
        classification_report(["x"], ["x", "y"], ["x", "y"])
    with pytest.raises(ValueError):
        classification_report([], [], ["x"])


def test_save_report_json_and_png(tmp_path):
    import matplotlib.image as mpimg

    labels = list(ds.MELD_LABELS)
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 7, 200))
    r = classification_report(y_true, y_pred, labels)
    paths = save_report(r, tmp_path / "eval", "MELD test / fold 1")
    assert paths["json"].endswith("MELD_test_fold_1.json") and paths["png"].endswith("MELD_test_fold_1_confusion.png")
    with open(paths["json"], encoding="utf-8") as f:
        assert json.load(f) == r
    img = mpimg.imread(paths["png"])
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 2 * img.shape[0] * 0.8


# ---------------------------------------------------------------------------------------------------------------
# IEMOCAP fake release

# (utterance suffix, code, transcript) per dialog; the M-prefixed script dialog has female utterances too.
IMPRO = [
    ("F000", "neu", "Excuse me."),
    ("M000", "xxx", "Do you have your forms?"),
    ("F001", "exc", "Yeah: I have them right here, see?"),
    ("M001", "ang", "I need another form. [LAUGHTER]"),
    ("F002", "fru", "This is ridiculous."),
    ("M002", "sad", "Okay."),
]
SCRIPT = [
    ("F000", "hap", "Oh, this is great."),
    ("M000", "neu", "Sure."),
    ("F001", "sur", "What?"),
    ("M001", "sad", "I don't know."),
]
KEPT = {"neu": "neutral", "exc": "happy", "hap": "happy", "ang": "angry", "sad": "sad"}


def _write_iemocap(base, crlf_sessions=(2,)):
    root = base / "IEMOCAP_full_release"
    for n in range(1, 6):
        sess = root / f"Session{n}"
        evald = sess / "dialog" / "EmoEvaluation"
        (evald / "Categorical").mkdir(parents=True)
        (sess / "dialog" / "transcriptions").mkdir(parents=True)
        for dialog, utts in ((f"Ses0{n}F_impro01", IMPRO), (f"Ses0{n}M_script01_1", SCRIPT)):
            wavdir = sess / "sentences" / "wav" / dialog
            wavdir.mkdir(parents=True)
            ev = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            tr = []
            t = 6.2901
            for i, (suf, code, text) in enumerate(utts):
                utt = f"{dialog}_{suf}"
                s, e = t, t + 1.5 + 0.25 * i
                t = e + 0.4
                ev += [
                    f"[{s:.4f} - {e:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 3.5000]",
                    "C-E2:\tNeutral;\t()",
                    "C-E3:\tNeutral;\tAnger;\t()",
                    "C-F1:\tNeutral;\t(curious)",
                    "A-E3:\tval 3; act 2; dom  2;\t()",
                    "A-F1:\tval 3; act 2; dom  1;\t()",
                    "",
                ]
                tr.append(f"{utt} [{s:08.4f}-{e:08.4f}]: {text}")
                sf.write(wavdir / f"{utt}.wav", np.zeros(800, np.int16), 16000, subtype="PCM_16")
            tr.insert(2, f"{dialog}_MXX0 [010.0000-010.5000]: Hello?")  # overlap tag, no wav, no label
            nl = "\r\n" if n in crlf_sessions else "\n"
            (evald / f"{dialog}.txt").write_bytes(nl.join(ev).encode() + nl.encode())
            (sess / "dialog" / "transcriptions" / f"{dialog}.txt").write_bytes(nl.join(tr).encode() + nl.encode())
            (evald / "Categorical" / f"{dialog}_e2_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
            (evald / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 mac resource fork \xff")
    return root


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory):
    return _write_iemocap(tmp_path_factory.mktemp("iemocap"))


def test_iemocap_labels_speakers_transcripts(iemocap_root):
    df = ds.iemocap_manifest(iemocap_root.parent)  # the release folder's parent works too
    assert len(df) == 5 * 7 and df["split"].isna().all() and df["audio_exists"].all()
    assert set(df["label"]) == set(ds.IEMOCAP_LABELS)
    assert not df["raw_label"].isin(["xxx", "fru", "sur"]).any()
    row = df.set_index("utt_id")
    assert row.loc["Ses01F_impro01_F001", "label"] == "happy"  # exc merged into happy
    assert row.loc["Ses01M_script01_1_F000", "label"] == "happy"
    assert "Ses01F_impro01_M000" not in row.index and "Ses01F_impro01_F002" not in row.index
    # speaker = session + the utterance's own gender, not the dialog prefix
    assert row.loc["Ses01F_impro01_M001", "speaker"] == "Ses01M"
    assert row.loc["Ses03M_script01_1_F000", "speaker"] == "Ses03F"
    assert row.loc["Ses03M_script01_1_F000", "gender"] == "F"
    assert df.groupby("session")["speaker"].nunique().eq(2).all() and df["speaker"].nunique() == 10
    # transcripts (colon inside the text, tags kept, CRLF files of session 2 parsed the same)
    assert row.loc["Ses01F_impro01_F000", "transcript"] == "Excuse me."
    assert row.loc["Ses01F_impro01_F001", "transcript"] == "Yeah: I have them right here, see?"
    assert row.loc["Ses02F_impro01_M001", "transcript"] == "I need another form. [LAUGHTER]"
    assert row.loc["Ses02M_script01_1_M001", "transcript"] == "I don't know."
    assert row.loc["Ses01F_impro01_F000", "start_s"] == pytest.approx(6.2901)
    assert row.loc["Ses01F_impro01_F000", "duration_s"] == pytest.approx(1.5)
    assert row.loc["Ses01F_impro01_F000", "arousal"] == pytest.approx(3.0)
    p = row.loc["Ses04M_script01_1_M000", "path"]
    assert p == str(
        iemocap_root / "Session4" / "sentences" / "wav" / "Ses04M_script01_1" / "Ses04M_script01_1_M000.wav"
    )
    # hap only (no exc) option
    assert len(ds.read_iemocap(iemocap_root, merge_excited=False)) == 5 * 6
    probed = ds.read_iemocap(iemocap_root, sessions=(1,), probe_audio=True)
    assert (probed["sample_rate"] == 16000).all() and probed["duration_s"].eq(0.05).all()


@pytest.mark.parametrize("fold", [1, 3, 5])
def test_iemocap_session_folds(iemocap_root, fold):
    df = ds.iemocap_manifest(iemocap_root, fold)
    val = fold % 5 + 1
    assert set(df.loc[df.split == "test", "session"]) == {fold}
    assert set(df.loc[df.split == "val", "session"]) == {val}
    assert set(df.loc[df.split == "train", "session"]) == set(range(1, 6)) - {fold, val}
    spk = {s: set(df.loc[df.split == s, "speaker"]) for s in ("train", "val", "test")}
    assert spk["test"] == {f"Ses0{fold}F", f"Ses0{fold}M"}
    assert not spk["train"] & spk["test"] and not spk["train"] & spk["val"] and not spk["val"] & spk["test"]
    assert (df["fold"] == fold).all()


def test_iemocap_speaker_independent_and_folds_iterator(iemocap_root):
    df = ds.iemocap_manifest(iemocap_root, 2, speaker_independent=True)
    assert set(df.loc[df.split == "test", "speaker"]) == {"Ses02F"}
    assert set(df.loc[df.split == "val", "speaker"]) == {"Ses02M"}
    assert set(df.loc[df.split == "train", "session"]) == {1, 3, 4, 5}
    m = ds.iemocap_manifest(iemocap_root, 2, speaker_independent=True, test_gender="M")
    assert set(m.loc[m.split == "test", "speaker"]) == {"Ses02M"}
    d = ds.iemocap_manifest(iemocap_root, 2, val_session=5)
    assert set(d.loc[d.split == "val", "session"]) == {5}
    folds = dict(ds.iemocap_folds(iemocap_root))
    assert sorted(folds) == [1, 2, 3, 4, 5]
    # every utterance is test exactly once over the 5 folds
    tested = pd.concat([f.loc[f.split == "test", "utt_id"] for f in folds.values()])
    assert tested.is_unique and len(tested) == 35
    with pytest.raises(ValueError):
        ds.iemocap_manifest(iemocap_root, 6)
    with pytest.raises(ValueError):
        ds.iemocap_manifest(iemocap_root, 2, val_session=2)


def test_iemocap_missing_audio(tmp_path, caplog):
    root = _write_iemocap(tmp_path, crlf_sessions=())
    gone = root / "Session5" / "sentences" / "wav" / "Ses05F_impro01" / "Ses05F_impro01_M002.wav"
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes"):
        df = ds.iemocap_manifest(root, 5)
    assert len(df) == 34 and df.attrs["missing_audio"] == ["Ses05F_impro01_M002"]
    assert "1 of 35" in caplog.text
    kept = ds.iemocap_manifest(root, 5, missing="keep")
    assert len(kept) == 35 and kept.loc[~kept.audio_exists, "utt_id"].tolist() == ["Ses05F_impro01_M002"]
    with pytest.raises(FileNotFoundError):
        ds.read_iemocap(root, missing="error")
    with pytest.raises(FileNotFoundError):
        ds.read_iemocap(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------------
# MELD fake release

HEADER = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
MOJI = "\u00e2\u20ac\u2122".encode("utf-8")  # "’" as UTF-8 read as cp1252, saved again as UTF-8: "â€™"
TRAIN_ROWS = [
    b'1,"also I was the point person on my company\x92s transition from the KL-5 to GR-6 system.",Chandler,'
    b'neutral,neutral,0,0,8,21,"00:16:16,059","00:16:21,731"',
    b"2,You must" + MOJI + b've had your hands full.,The Interviewer,neutral,neutral,0,1,8,21,"00:16:21,940",'
    b'"00:16:23,442"',
    b'3,"He said ""hi"", then left.",Joey,joy,positive,0,2,8,21,"00:16:23,442","00:16:26,389"',
    b'4,"Oh my God!",Rachel,surprise,positive,1,0,1,1,"00:01:00,000","00:01:01,500"',
    b'5,No.,Ross,anger,negative,1,1,1,1,"00:01:02,000","00:01:03,000"',
    b'6,"I\x92m sorry\x85",Monica,sadness,negative,1,2,1,1,"00:01:03,100","00:01:05,100"',
    b'7,Ew.,Phoebe,disgust,negative,2,0,2,3,"00:02:00,000","00:02:00,800"',
    b'8,What was that?,Monica,fear,negative,2,1,2,3,"00:02:01,000","00:02:00,000"',  # end < start
    b'9,Caf\xc3\xa9 au lait.,Ross,neutral,neutral,2,2,2,3,"00:02:03,000","00:02:04,000"',  # correct UTF-8
]
DEV_ROWS = [
    b'1,"Oh my God, he' + MOJI + b"s lost it. He" + MOJI + b's totally lost it.",Phoebe,sadness,negative,0,0,4,7,'
    b'"00:20:57,256","00:21:00,049"',
    b'2,What?,Monica,surprise,negative,0,1,4,7,"00:21:01,927","00:21:03,261"',
    b'3,"Or! Or, we could go to the bank, close our accounts and cut them off at the source.",Ross,neutral,'
    b'neutral,1,0,4,4,"00:12:24,660","00:12:30,915"',
]
TEST_ROWS = [
    b"1,Why do all you\x92re coffee mugs have numbers on the bottom?,Mark,surprise,positive,0,0,3,19,"
    b'"00:14:38,127","00:14:40,378"',
    b"2,Oh. That\x92s so Monica can keep track. That way if one on them is missing she can be like,"
    b'Rachel,anger,negative,0,1,3,19,"00:14:40,629","00:14:47,385"',
    b'3,"Y\'know what?",Rachel,Neutral,neutral,0,2,3,19,"00:14:56,353","00:14:59,189"',
]


def _write_meld(base, missing_train=("dia1_utt1",)):
    root = base / "MELD.Raw"
    root.mkdir(parents=True)
    dev_audio = base / "extracted" / "dev_wav"
    for off, rows, nl, adir in (
        ("train", TRAIN_ROWS, b"\n", root / "train_splits"),
        ("dev", DEV_ROWS, b"\r\n", dev_audio),
        ("test", TEST_ROWS, b"\n", root / "output_repeated_splits_test"),
    ):
        (root / f"{off}_sent_emo.csv").write_bytes(nl.join([HEADER, *rows]) + nl)
        adir.mkdir(parents=True)
        for cells in csv.reader(io.StringIO(b"\n".join(rows).decode("latin-1"))):
            name = f"dia{int(cells[5])}_utt{int(cells[6])}"
            if not (off == "train" and name in missing_train):
                sf.write(adir / f"{name}.wav", np.zeros(1600, np.float32), 16000)
    return root, dev_audio


@pytest.fixture()
def meld(tmp_path):
    return _write_meld(tmp_path)


def test_meld_manifest_splits_text_and_missing(meld, caplog):
    root, dev_audio = meld
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes"):
        df = ds.meld_manifest(root, audio_dirs={"val": dev_audio})
    assert df.attrs["n_missing_audio"] == 1 and df.attrs["missing_audio"] == ["train_dia1_utt1"]
    assert "1 of 15" in caplog.text
    assert len(df) == 14 and df["audio_exists"].all()
    assert df.groupby("split").size().to_dict() == {"train": 8, "val": 3, "test": 3}
    assert set(df["label"]) == set(ds.MELD_LABELS)
    assert df["utt_id"].is_unique and {"train_dia0_utt0", "dev_dia0_utt0", "test_dia0_utt0"} <= set(df["utt_id"])
    r = df.set_index("utt_id")
    # raw cp1252 bytes, UTF-8 mojibake and correct UTF-8 all end up as the intended text
    assert r.loc["train_dia0_utt0", "transcript"] == (
        "also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system."
    )
    assert r.loc["train_dia0_utt1", "transcript"] == "You must\u2019ve had your hands full."
    assert r.loc["train_dia1_utt2", "transcript"] == "I\u2019m sorry\u2026"
    assert r.loc["train_dia2_utt2", "transcript"] == "Caf\u00e9 au lait."
    assert r.loc["dev_dia0_utt0", "transcript"] == "Oh my God, he\u2019s lost it. He\u2019s totally lost it."
    assert r.loc["train_dia0_utt2", "transcript"] == 'He said "hi", then left.'
    assert r.loc["test_dia0_utt2", "label"] == "neutral"  # case normalised
    assert r.loc["train_dia0_utt1", "speaker"] == "The Interviewer"
    assert r.loc["train_dia0_utt0", "split"] == "train" and r.loc["dev_dia0_utt0", "split"] == "val"
    assert r.loc["train_dia0_utt0", "duration_s"] == pytest.approx(5.672)
    assert math.isnan(r.loc["train_dia2_utt1", "duration_s"])  # end before start in the subtitles
    assert r.loc["dev_dia1_utt0", "path"] == str(dev_audio / "dia1_utt0.wav")
    assert r.loc["test_dia0_utt1", "path"] == str(root / "output_repeated_splits_test" / "dia0_utt1.wav")
    assert r.loc["test_dia0_utt1", "sentiment"] == "negative" and r.loc["test_dia0_utt1", "season"] == 3

    kept = ds.meld_manifest(root.parent, audio_dirs={"dev": dev_audio}, missing="keep")
    assert len(kept) == 15 and kept.loc[~kept.audio_exists, "utt_id"].tolist() == ["train_dia1_utt1"]
    with pytest.raises(FileNotFoundError):
        ds.meld_manifest(root, audio_dirs={"dev": dev_audio}, missing="error")
    # default folder names: the dev audio is not where the release puts it -> all 3 dev rows missing
    only_dev = ds.meld_manifest(root, splits=("dev",), missing="keep")
    assert (~only_dev["audio_exists"]).sum() == 3
    # another extension: nothing matches .flac
    assert len(ds.meld_manifest(root, audio_dirs={"dev": dev_audio}, ext="flac")) == 0


def test_meld_rejects_unknown_emotion(tmp_path):
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    (root / "train_sent_emo.csv").write_bytes(
        HEADER + b'\n1,Hi.,Joey,contempt,neutral,0,0,1,1,"00:00:01,000","00:00:02,000"\n'
    )
    with pytest.raises(ValueError, match="contempt"):
        ds.meld_manifest(root, splits=("train",))


# ---------------------------------------------------------------------------------------------------------------
# manifest I/O


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_and_load_manifest(meld, tmp_path, suffix):
    root, dev_audio = meld
    df = ds.meld_manifest(root, audio_dirs={"dev": dev_audio})
    path = ds.write_manifest(df, tmp_path / "out" / f"meld{suffix}")
    back = ds.load_manifest(path)
    assert back["utt_id"].tolist() == df["utt_id"].tolist()
    assert back["recording_id"].tolist() == df["utt_id"].tolist()
    assert back["transcript"].tolist() == df["transcript"].tolist()
    assert back["path"].tolist() == df["path"].tolist()
    # pipeline.labeling.sources (labeling) reads the same manifest with the same ids and transcripts
    from pipeline.labeling.sources import read_manifest

    recs = read_manifest(path)
    assert [r.recording_id for r in recs] == df["utt_id"].tolist()
    assert all(r.error is None for r in recs)
    assert recs[1].transcript == "You must\u2019ve had your hands full."


def test_write_manifest_validates(tmp_path, iemocap_root):
    df = ds.iemocap_manifest(iemocap_root, 1)
    with pytest.raises(ValueError, match="absolute"):
        ds.write_manifest(df.assign(path="rel/x.wav"), tmp_path / "m.csv")
    with pytest.raises(ValueError, match="required"):
        ds.write_manifest(df.drop(columns=["speaker"]), tmp_path / "m.csv")
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        ds.write_manifest(df, tmp_path / "m.txt")
    p = ds.write_manifest(df, tmp_path / "iemocap_fold1.parquet")
    back = ds.load_manifest(p)
    assert back.groupby("split").size().to_dict() == df.groupby("split").size().to_dict()
    assert (back["fold"] == 1).all() and back["session"].dtype.kind == "i"
