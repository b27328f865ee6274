"""Prompts for a text-only teacher LLM, written for this project, and the instruction phrasings.

For each type (``conversation``, ``detail``, ``reasoning``) there is a system message and two
few-shot examples; :func:`build_messages` assembles them as chat messages: system, then each
example as a user turn (its context) and an assistant turn (its answer), then the image's context.

Block format (what the parser reads back): conversation and reasoning outputs are turns of ::

    Question: <text>
    Answer: <text, may span lines>

separated by blank lines (a reasoning output is exactly one such block); a detail output is plain
prose. ``DETAIL_INSTRUCTIONS`` / ``BRIEF_INSTRUCTIONS`` are the human turns paired with detailed
descriptions and with stage-1 captions; ``VQA_SUFFIX`` ends every short-answer question.
"""

from __future__ import annotations

import hashlib
import json

LLM_TYPES = ("conversation", "detail", "reasoning")
VQA_SUFFIX = "Answer the question using a single word or phrase."

DETAIL_INSTRUCTIONS = [
    "Describe this image in detail.",
    "Give a thorough description of the picture.",
    "What is in this image? Describe it carefully and completely.",
    "Explain everything you can see in this image.",
    "Write a detailed account of what the image contains.",
    "Walk me through this picture, describing each part of it.",
    "Provide a comprehensive description of the image.",
    "Tell me about this image in as much detail as you can.",
    "Describe the scene, including every object and where it is.",
    "Put into words everything this image shows.",
]

BRIEF_INSTRUCTIONS = [
    "Describe the image briefly.",
    "Give a short caption for this picture.",
    "Summarize the image in a few words.",
    "What does this image show? Answer in one sentence.",
    "Write a brief description of the picture.",
    "Provide a concise caption for the image.",
    "In one line, what is in this image?",
    "Sum up the picture briefly.",
    "Share a quick description of this image.",
    "Caption this image.",
    "Briefly, what do you see here?",
]

_SEEING = (
    "You are a visual assistant talking about one image. You cannot see the image; instead you get "
    "a text description of it: a few captions written by different people, then one line per object "
    "as 'name: [x1, y1, x2, y2]', a bounding box with coordinates between 0 and 1 (x grows to the "
    "right, y grows downwards). Use all of it, but write as if you were looking at the image "
    "yourself: never mention captions, descriptions, coordinates or bounding boxes, and state only "
    "what the description supports."
)

SYSTEM = {
    "conversation": _SEEING + (
        "\n\nWrite a conversation between a person asking about the image and you answering. Ask "
        "varied questions — what objects there are, how many, their colors and kinds, where they are "
        "and where they are relative to each other — and only questions the description answers "
        "for certain. Answer in full, friendly sentences.\n\nFormat: 3 to 6 turns, each written as "
        "'Question:' followed by the question, a new line, 'Answer:' followed by the answer, with a "
        "blank line between turns. Write nothing else."
    ),
    "detail": _SEEING + (
        "\n\nDescribe the image in rich detail, in one or two paragraphs: every object or group of "
        "objects, how many there are, their attributes, where they are in the image and relative to "
        "each other, and the overall scene. Use the boxes to work out positions and sizes, but "
        "express them in words (left, top right corner, larger than, next to). Write only the "
        "description."
    ),
    "reasoning": _SEEING + (
        "\n\nWrite one question about the image that needs reasoning, not just reading off what is "
        "there: combining counts, comparing objects, working out positions, or what follows from "
        "the scene. Then answer it step by step: first the facts you see, then how they combine, "
        "then the conclusion. The answer must follow with certainty from the description.\n\n"
        "Format: 'Question:' followed by the question, a new line, 'Answer:' followed by the "
        "answer. Write nothing else."
    ),
}

_SHAPES_CONTEXT = (
    "Three shapes on a plain gray background: a red circle, a blue square and a yellow star.\n"
    "An image with a circle, a square and a star.\n"
    "A large red circle in the top left corner and a small yellow star in the bottom right corner.\n"
    "Red, blue and yellow shapes on a plain gray background.\n"
    "A blue square to the right of a red circle.\n"
    "large red circle: [0.071, 0.080, 0.393, 0.402]\n"
    "medium blue square: [0.509, 0.125, 0.732, 0.348]\n"
    "small yellow star: [0.795, 0.804, 0.920, 0.929]"
)
_KITCHEN_CONTEXT = (
    "A woman slices vegetables at a kitchen counter.\n"
    "Someone preparing food next to a stove with two pots on it.\n"
    "A kitchen with a cutting board full of chopped carrots.\n"
    "A person cooking in a bright kitchen near a window.\n"
    "A woman in an apron cuts carrots on a wooden board.\n"
    "person: [0.312, 0.104, 0.598, 0.995]\n"
    "knife: [0.470, 0.553, 0.561, 0.610]\n"
    "carrot: [0.402, 0.622, 0.455, 0.660]\n"
    "carrot: [0.468, 0.640, 0.521, 0.671]\n"
    "oven: [0.641, 0.452, 0.998, 0.996]\n"
    "bowl: [0.702, 0.388, 0.815, 0.451]"
)

FEW_SHOT = {
    "conversation": [
        (_SHAPES_CONTEXT,
         "Question: How many shapes are in the image?\nAnswer: There are three shapes: a circle, a square and a star.\n\n"
         "Question: What color is the circle?\nAnswer: The circle is red, and it is the largest of the three shapes.\n\n"
         "Question: Where is the star?\nAnswer: The small yellow star sits in the bottom right corner of the image.\n\n"
         "Question: Is the square to the left or to the right of the circle?\nAnswer: The blue square is to the right "
         "of the red circle, near the top of the image."),
        (_KITCHEN_CONTEXT,
         "Question: What is the woman doing?\nAnswer: She is cutting carrots on a wooden cutting board at the kitchen "
         "counter.\n\n"
         "Question: How many carrots can you see on the board?\nAnswer: I can see two carrot pieces on the board, right "
         "next to her knife.\n\n"
         "Question: What is on the right side of the image?\nAnswer: On the right there is an oven, with a bowl placed "
         "on top of it."),
    ],
    "detail": [
        (_SHAPES_CONTEXT,
         "The image shows three flat shapes on a plain gray background. In the top left corner there is a large red "
         "circle, the biggest object in the picture. To its right, near the top of the image, sits a medium-sized blue "
         "square. Far away from both, in the bottom right corner, there is a small yellow star. The shapes do not "
         "touch each other, and the middle and lower left of the image are empty."),
        (_KITCHEN_CONTEXT,
         "A woman is preparing food in a bright kitchen. She stands in the middle of the image, wearing an apron, and "
         "holds a knife over a wooden cutting board, where two pieces of carrot lie ready to be chopped. To her right "
         "is an oven that takes up the lower right part of the picture, with a bowl resting on top of it. The scene "
         "looks like an ordinary moment of home cooking."),
    ],
    "reasoning": [
        (_SHAPES_CONTEXT,
         "Question: If the blue square were moved into the bottom left corner, which shape would then be closest to "
         "the top edge?\nAnswer: Right now the red circle and the blue square are both near the top, and the yellow "
         "star is at the bottom. If the square moved to the bottom left corner, the only shape left near the top would "
         "be the red circle. So the red circle would be closest to the top edge."),
        (_KITCHEN_CONTEXT,
         "Question: What meal might the woman be preparing, and what will she probably do next?\nAnswer: She is "
         "chopping carrots on a cutting board, and an oven with a bowl on it stands right next to her. Chopped "
         "vegetables beside a stove usually go into a cooked dish such as a soup or a stew. So she is likely making "
         "a vegetable dish, and next she will probably put the carrots into the bowl or a pot to cook them."),
    ],
}


def build_messages(kind: str, context: str) -> list[dict]:
    """System + few-shot (as user/assistant turns) + this image's context, as chat messages."""
    if kind not in SYSTEM:
        raise KeyError(f"no LLM prompt for type {kind!r}; LLM types: {', '.join(LLM_TYPES)}")
    messages = [{"role": "system", "content": SYSTEM[kind]}]
    for ctx, answer in FEW_SHOT[kind]:
        messages += [{"role": "user", "content": ctx}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": context})
    return messages


def prompt_hash(payload) -> str:
    """A short stable hash of any JSON-serialisable prompt payload."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
