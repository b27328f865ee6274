"""LLaVA-Bench prompts: the symbolic context, the reference-answer prompt and the judge rubrics.

The judge sees the image only as text — captions plus object boxes — exactly like the text-only
teacher that writes the reference answer. It rates two answers 1–10, the reference as
"Assistant 1" and the model as "Assistant 2", with a rubric written for the question's category:

- ``conv``: a short conversational question about the visual content — correctness first;
- ``detail``: a detailed description — coverage, accuracy of objects/attributes/positions, no
  invented content;
- ``complex``: reasoning beyond what is seen — sound reasoning grounded in the visible content.

:func:`parse_scores` reads the two scores robustly; anything it cannot read is ``None`` (the
caller retries, then excludes and counts the review — it never becomes −1).
"""

from __future__ import annotations

import re

from llavakit.errors import DataError

CATEGORIES = ("conv", "detail", "complex")

JUDGE_SYSTEM = "You are a fair, precise reviewer of answers about images. You follow the output format exactly."

_COMMON = (
    "You cannot see the image; the [Context] above describes it with captions and object boxes "
    "(normalised [x1, y1, x2, y2], origin top-left). Treat the context as the truth about the image. "
    "Rate each assistant's answer to the [Question] with an integer from 1 (useless or wrong) to 10 "
    "(excellent). Judge the two answers independently of their order and of their length.\n"
    "{rubric}\n"
    "Output format: the first line holds only the two scores, Assistant 1 first, separated by a "
    "space (for example: 7 4). From the second line on, explain your ratings briefly."
)

RUBRICS = {
    "conv": (
        "This is a conversational question about the image. What matters most: is the answer correct "
        "according to the context, and does it answer what was asked directly? Deduct heavily for any "
        "claim the context contradicts (wrong colours, counts, objects or positions); a short correct "
        "answer deserves a high score."
    ),
    "detail": (
        "The user asked for a detailed description of the image. Reward coverage of the main objects, "
        "their attributes (colour, size, shape), counts and spatial layout as given by the context. "
        "Deduct for every object or attribute the context does not support (hallucination) and for "
        "omitting the most salient content. Fluency matters less than accuracy and coverage."
    ),
    "complex": (
        "This question needs reasoning beyond listing what is visible. Reward answers whose reasoning "
        "is sound, relevant to the question and grounded in what the context shows; deduct for "
        "reasoning built on objects or facts that are not in the image, for contradictions and for "
        "answers that ignore the question."
    ),
}

REFERENCE_SYSTEM = (
    "You are an AI visual assistant. You are given a description of one image — captions and object "
    "boxes (normalised [x1, y1, x2, y2], origin top-left) — and answer questions about the image as if "
    "you were looking at it. Never mention the captions, the boxes or the coordinates; describe what "
    "is seen. Answer in the style the question calls for: short and direct for a simple question, "
    "thorough for a request for a detailed description, and with clear step-by-step reasoning for "
    "a question that needs reasoning."
)


def format_context(record: dict, source: str = "context") -> str:
    """Captions, a blank line, then one ``category: [x1, y1, x2, y2]`` line per instance."""
    captions = record.get("captions")
    instances = record.get("instances", [])
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{source}: image {record.get('image')!r}: captions must be a list of strings")
    if not isinstance(instances, list):
        raise DataError(f"{source}: image {record.get('image')!r}: instances must be a list")
    lines = [c.strip() for c in captions]
    boxes = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or "category" not in inst or "bbox" not in inst:
            raise DataError(f"{source}: image {record.get('image')!r}: instances[{i}] needs category and bbox")
        bbox = inst["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise DataError(f"{source}: image {record.get('image')!r}: instances[{i}].bbox must be 4 numbers")
        box = ", ".join(f"{round(float(v), 3):g}" for v in bbox)
        boxes.append(f"{inst['category']}: [{box}]")
    return "\n".join(lines) + ("\n\n" + "\n".join(boxes) if boxes else "")


def judge_prompt(context: str, question: str, reference: str, answer: str, category: str) -> str:
    if category not in RUBRICS:
        raise DataError(f"question category {category!r} is not one of {', '.join(CATEGORIES)}")
    return (
        f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
        f"[Assistant 1]\n{reference}\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer}\n[End of Assistant 2]\n\n"
        f"[System]\n{_COMMON.format(rubric=RUBRICS[category])}"
    )


def reference_prompt(context: str, question: str) -> str:
    return f"[Image description]\n{context}\n\n[Question]\n{question}"


_NUM = r"(\d+(?:\.\d+)?)(?:\s*/\s*10\b)?"
_OUT_OF_10 = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b")
# a label, then only a verb/colon between it and the score ("Assistant 1: 8", "Assistant 2 scores 7",
# "Assistant 1's score is 8/10") — never a number that merely follows the next label
_LABELLED = re.compile(
    r"(?i)assistant\s*([12])(?:'s)?"
    r"(?:\s+(?:receives|received|gets|got|scores|scored|deserves|earns|is\s+given|was\s+given|has|obtains))?"
    r"(?:\s+(?:a|an|the))?(?:\s+(?:overall\s+)?(?:score|rating|grade))?(?:\s+(?:of|is|was))?\s*[:=\-–]?\s*"
    + _NUM + r"(?![\d.])"
)
_PAIR = re.compile(r"^\W*(?:(?:scores?|ratings?)\s*:?\s*)?(\d+(?:\.\d+)?)\s*(?:,|;|/|\s|and|vs\.?)\s*"
                   r"(\d+(?:\.\d+)?)\W*$", re.I)


def _in_range(a: float, b: float) -> tuple[float, float] | None:
    return (a, b) if 1 <= a <= 10 and 1 <= b <= 10 else None


def parse_scores(review: str) -> tuple[float, float] | None:
    """``(reference score, model score)`` from a review, or ``None``.

    Accepted: a first non-empty line with just two numbers ("8 6", "8, 6", "8/10 6/10",
    "**8 6**"), or the two scores labelled anywhere ("Assistant 1: 8 … Assistant 2: 6").
    Scores must lie in 1–10.
    """
    text = (review or "").strip()
    if not text:
        return None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    m = _PAIR.match(_OUT_OF_10.sub(r"\1", first.strip().replace("*", "")))
    if m:
        return _in_range(float(m.group(1)), float(m.group(2)))
    found: dict[str, float] = {}
    for which, value in _LABELLED.findall(text.replace("*", "")):
        found.setdefault(which, float(value))
    if len(found) == 2:
        return _in_range(found["1"], found["2"])
    return None
