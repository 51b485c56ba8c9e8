"""Words that matter, as in real calls: lexical emotion cues for the synthetic call archive (``cues=True``).

Real callers say "this is the third time I'm calling" as often as they shout it, and they are sarcastic or politely
furious. So in a cue call each emotional turn is realised one of four ways (:data:`REALISATIONS`):

  ``both``        the voice shows the emotion and the words say it
  ``voice``       the voice shows it, the wording is neutral (the text-free corpus's only case)
  ``text``        the words say it, the voice is neutral (polite anger, flat sadness, dry thanks)
  ``contradict``  the voice shows it and the words say another emotion (sarcastic thanks when angry, "I'm fine,
                  great" when sad); the label is the voice's

and a neutral turn sometimes uses a *distractor*: emotion words in a neutral statement ("I'm sorry, could you repeat
that?"). Neither modality alone suffices: speech alone misses ``text`` turns, text alone misses ``voice`` turns and
is misled by ``contradict`` turns and distractors.

Three disjoint wording families keep generalisation honest: ``calls`` (the evaluation archive's), ``training``
(training calls') and ``validation`` (validation calls', which pick the best epoch). Nothing shares a sentence across
them, so a model can only carry a cue from one to another through what it knows about words -- and model selection
cannot reward memorised sentences: Whisper's frames carry the words too, so with shared cue sentences a
*speech-only* model validated at UA 0.77-0.79 while scoring 0.39-0.44 on the evaluation archive (measured).
"""

from __future__ import annotations

import numpy as np

REALISATIONS = ("both", "voice", "text", "contradict")
REALISATION_P = (0.40, 0.25, 0.20, 0.15)
CONTRADICTS = {"angry": "happy", "sad": "happy"}  # label -> the emotion its contradicting words say
DISTRACTOR_P = 0.15  # neutral turns that use a distractor line

CUE_LINES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "calls": {
        "customer": {
            "angry": (
                "This is the third time I am calling about this.",
                "I am sick and tired of being passed around.",
                "This is completely unacceptable.",
                "Nobody in your company seems to care at all.",
                "I want to speak to your manager right now.",
                "You people keep making the same mistake.",
                "I am fed up with this service.",
                "Why does nothing ever work with you?",
            ),
            "happy": (
                "Thank you so much, that is wonderful.",
                "That is great news, I really appreciate it.",
                "Brilliant, you have made my day.",
                "Oh that is fantastic, thank you.",
                "Perfect, I am really pleased with that.",
                "You have been so helpful, thank you.",
            ),
            "sad": (
                "I have had a really hard month.",
                "My husband passed away in the spring.",
                "I just feel so alone with all of this.",
                "I lost my job and I cannot pay it.",
                "Everything seems to go wrong for me lately.",
                "I am sorry, I am finding this very difficult.",
            ),
        },
        "agent": {
            "happy": (
                "I am really glad we could sort that out for you.",
                "That is lovely to hear, thank you.",
                "Great news, it is all fixed now.",
                "It has been a pleasure helping you today.",
            ),
        },
        "distractor": (
            "Sorry, could you repeat the last part?",
            "The complaints form is on our website.",
            "I am happy to read the number back to you.",
            "The fee was cancelled, that is fine.",
            "Sorry about the noise, I am on the train.",
        ),
    },
    "training": {
        "customer": {
            "angry": (
                "I have had enough of this nonsense.",
                "This is ridiculous, I have waited for weeks.",
                "I am absolutely furious about the charges.",
                "Every time I ring you make it worse.",
                "Do not put me on hold again.",
                "Your service is a joke.",
                "I demand a proper answer today.",
                "How hard can it be to fix one thing?",
                "I am really annoyed with your company.",
                "This is outrageous and you know it.",
                "Stop wasting my time.",
                "I will cancel everything if this goes on.",
                "You promised me this would be fixed.",
                "I am so angry I could scream.",
                "Frankly this is a disgrace.",
                "I have been lied to three times now.",
            ),
            "happy": (
                "Wow, thanks a lot, that is amazing.",
                "Lovely, that is exactly what I hoped for.",
                "Excellent, I am delighted with that.",
                "Thanks, you are a star.",
                "That is brilliant, it works perfectly now.",
                "I am so happy it is sorted.",
                "Great, that really made my week.",
                "Oh how kind of you, thank you.",
                "Superb, I could not ask for more.",
                "That is the best news all day.",
                "Marvellous, I am thrilled.",
                "Thank you, that is a huge relief.",
            ),
            "sad": (
                "It has been a terrible year for our family.",
                "My mother is very ill in hospital.",
                "I do not know what to do any more.",
                "I cannot cope with any more bills.",
                "Nothing is going right since the divorce.",
                "Sorry, this is all a bit much for me.",
                "I feel completely hopeless about it.",
                "We had to put our dog down last week.",
                "I have been crying all morning.",
                "I miss my wife so much.",
                "I am struggling to get out of bed.",
                "It is hard to talk about it.",
            ),
        },
        "agent": {
            "happy": (
                "Wonderful, I am pleased that worked out.",
                "Fantastic, thanks for your patience with us.",
                "Lovely, that is all done for you.",
                "Brilliant, happy to have helped.",
                "Great, you are all set now.",
                "Excellent, I am glad it is working.",
                "Perfect, that is good news for you.",
                "Super, enjoy the rest of your week.",
            ),
        },
        "distractor": (
            "Sorry, the line is a bit quiet.",
            "The card is blocked, that is normal after three tries.",
            "I am glad to confirm the address first.",
            "The furious weather caused the delay in the region.",
            "No problem, I will wait while you look.",
            "The happy hour offer ended in May.",
            "Sorry, I missed the last number.",
        ),
    },
    "validation": {
        "customer": {
            "angry": (
                "I am livid about how I have been treated.",
                "This has been going on for far too long.",
                "I am not putting up with this any more.",
                "Your staff are completely useless.",
                "Fix it now or I am leaving.",
                "I am extremely unhappy with this mess.",
            ),
            "happy": (
                "Fab, cheers, that is great.",
                "I am over the moon, thank you.",
                "Splendid, that solves everything.",
                "Oh lovely, I am very grateful.",
                "That is wonderful, thanks ever so much.",
            ),
            "sad": (
                "I have lost everything this year.",
                "My son has been very ill.",
                "I am so lonely since he died.",
                "Honestly I feel like giving up.",
                "Things have been really bleak lately.",
            ),
        },
        "agent": {
            "happy": (
                "Smashing, that is done now.",
                "Lovely stuff, glad to help.",
                "Great, it was a pleasure.",
            ),
        },
        "distractor": (
            "Sorry, which account was that?",
            "The sad news section is on page two.",
            "I am glad to spell that for you.",
        ),
    },
}


def cue_family(lines: str) -> str:
    """The cue wording family of a line set: the evaluation archive's lines (``calls``) get ``calls``, ``service``
    (the demo's validation calls) gets ``validation``, all others ``training``."""
    return {"calls": "calls", "service": "validation"}.get(lines, "training")


def realise(label: str, role: str, rng: np.random.Generator) -> str:
    """How an emotional turn shows its ``label`` (one of :data:`REALISATIONS`); neutral turns are ``none``.
    Agents are never sarcastic; labels without a contradicting emotion realise ``contradict`` as ``both``."""
    if label == "neutral":
        return "none"
    r = REALISATIONS[int(rng.choice(len(REALISATIONS), p=REALISATION_P))]
    if r == "contradict" and (role != "customer" or label not in CONTRADICTS):
        return "both"
    return r


def cue_line(family: str, role: str, label: str, realisation: str, deck: dict, rng: np.random.Generator) -> str | None:
    """The cue sentence for one turn (None: the turn's wording stays neutral). ``deck`` holds per-pool shuffled
    decks (few repeats within a call)."""
    fam = CUE_LINES[family]
    if realisation == "none":
        if rng.random() >= DISTRACTOR_P:
            return None
        pool_key, pool = ("distractor",), fam["distractor"]
    elif realisation == "voice":
        return None
    else:
        said = CONTRADICTS[label] if realisation == "contradict" else label
        pool = fam[role].get(said) or fam["customer"][said]
        pool_key = (role, said)
    d = deck.setdefault(pool_key, [])
    if not d:
        d.extend(rng.permutation(len(pool)).tolist())
    return pool[d.pop()]
