"""A synthetic clinical-triage text data set: short patient messages in five classes.

Realistic enough to be a real learning problem, not trivially separable: classes share
vocabulary (a "chest" can be an emergency or a routine follow-up), messages carry filler, typos
and irrelevant context, some combine two concerns, and a share of labels is noisy (as triage
labels are). Accuracy therefore stays well under 100%. Seeded and offline.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

LABELS = ("emergency", "urgent", "routine", "medication", "administrative")

_CORE: dict[str, Sequence[str]] = {
    "emergency": (
        "crushing chest pain spreading to my left arm",
        "my father collapsed and is not responding",
        "severe bleeding that will not stop",
        "she cannot breathe properly and her lips look blue",
        "sudden weakness on one side of the face and slurred speech",
        "my child had a seizure that lasted five minutes",
        "swelling of the throat after a bee sting, hard to swallow",
        "fell from a ladder and hit his head, now confused",
        "coughing up blood since this morning",
        "took too many pills on purpose",
    ),
    "urgent": (
        "fever of 39.5 for three days that is not going down",
        "painful urination and pain in my lower back",
        "deep cut on my hand that probably needs stitches",
        "ear pain and fever in my toddler since last night",
        "vomiting all day and cannot keep water down",
        "twisted my ankle, it is swollen and I cannot walk on it",
        "rash spreading quickly with a fever",
        "chest feels tight when I climb stairs, new since this week",
        "asthma worse than usual, inhaler helps only a little",
        "stomach pain on the right side getting worse",
    ),
    "routine": (
        "would like a yearly check up",
        "follow up on my blood pressure readings",
        "mild cough for two weeks but otherwise fine",
        "want to discuss my cholesterol results",
        "mole on my back that I would like someone to look at",
        "trouble sleeping for a few months",
        "knee aches after running, no swelling",
        "questions about vaccinations before travelling",
        "follow up after my chest x ray last month",
        "feeling tired lately, maybe check my iron",
    ),
    "medication": (
        "need a refill of my blood pressure tablets",
        "my inhaler prescription ran out",
        "can I take ibuprofen with my current medication",
        "the new tablets make me dizzy, should I stop them",
        "pharmacy says my prescription for metformin expired",
        "forgot to take my insulin dose yesterday, what now",
        "side effects from the antibiotics, upset stomach",
        "need a repeat prescription for my thyroid medicine",
        "is it ok to split the pills in half",
        "the dose of my painkillers is not enough anymore",
    ),
    "administrative": (
        "need a sick note for my employer",
        "please send my test results to my new address",
        "want to change my appointment to next week",
        "how do I register my newborn with the practice",
        "can you fax my records to the hospital",
        "need a form signed for my insurance",
        "I would like to cancel my appointment on friday",
        "request a copy of my vaccination record",
        "question about the bill from my last visit",
        "my address and phone number have changed",
    ),
}

# phrases that appear across classes (class overlap)
_SHARED = (
    "chest",
    "fever",
    "my child",
    "since yesterday",
    "the pharmacy",
    "my appointment",
    "blood pressure",
    "pain",
    "inhaler",
    "breathing",
)
_OPENERS = ("", "", "hi, ", "hello, ", "good morning, ", "sorry to bother, ", "urgent: ", "hi doc ")
_CLOSERS = (
    "",
    "",
    " thanks",
    " please call back",
    " what should I do?",
    " is this serious?",
    " thank you",
    " when can I come in?",
)
_FILLER = (
    "I work nights",
    "I am 54",
    "this happened before last year",
    "my wife asked me to write",
    "not sure who to ask",
    "I tried calling earlier",
    "also my back hurts a little",
    "we just moved here",
)


def _typo(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 2)):
        if len(chars) < 4:
            break
        i = rng.randrange(1, len(chars) - 1)
        op = rng.random()
        if op < 0.4:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, chars[i])
    return "".join(chars)


def make_message(label: str, rng: random.Random) -> str:
    parts = [rng.choice(_CORE[label])]
    if rng.random() < 0.25:  # a second concern from another class: genuine ambiguity
        other = rng.choice([c for c in LABELS if c != label])
        parts.append("also " + rng.choice(_CORE[other]))
    if rng.random() < 0.35:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(_FILLER))
    if rng.random() < 0.3:
        parts.append(rng.choice(_SHARED))
    text = rng.choice(_OPENERS) + ", ".join(parts) + rng.choice(_CLOSERS)
    if rng.random() < 0.3:
        text = _typo(text, rng)
    if rng.random() < 0.2:
        text = text.upper() if rng.random() < 0.3 else text.lower()
    return text


def generate(
    n: int = 1000,
    seed: int = 0,
    label_noise: float = 0.08,
    weights: Sequence[float] = (0.15, 0.2, 0.3, 0.2, 0.15),
) -> list[dict[str, str]]:
    """``n`` rows ``{"text", "label"}``; ``label_noise`` of them relabelled at random."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choices(LABELS, weights=weights)[0]
        text = make_message(label, rng)
        flip, other = rng.random(), rng.choice(LABELS)  # drawn always: noise-free twin aligns
        if flip < label_noise:
            label = other
        rows.append({"text": text, "label": label})
    return rows
