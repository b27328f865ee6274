"""The official ScienceQA files, the paper's columns, and the prompt formats.

``problems.json`` maps a problem id (pid) to ``question, choices, answer (index), hint, image
("image.png" or null), grade ("grade1".."grade12"), subject, topic, category, skill, lecture,
solution, split``; ``pid_splits.json`` maps ``train/val/test/...`` to lists of pids. Images live at
``<split>/<pid>/image.png`` in the official release.

A prompt format is ``INPUT-OUTPUT`` (the naming of the ScienceQA / LLaVA code):

- INPUT letters, in order: ``Q`` question, ``C`` context (the hint; "N/A" when empty), ``M``
  multiple-choice options "(A) … (B) …", optionally ``L`` lecture and ``E`` explanation (the
  solution) as an upper-bound input. Q, C and M must each appear once.
- OUTPUT letters: ``A`` "The answer is X." plus optional ``L`` lecture and ``E`` explanation.
  ``A`` first (``ALE``) answers first and then gives the reasons after "BECAUSE:"; ``A`` last
  (``LEA``, the paper's best) reasons first and ends with "The answer is X.".

As in LLaVA's conversion, the leading "Question: " label of the input and the "Answer: " label of
the output are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llavakit.errors import DataError
from llavakit.io import read_json

LETTERS = "ABCDE"
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
COLUMN_HELP = {
    "NAT": "subject: natural science",
    "SOC": "subject: social science",
    "LAN": "subject: language science",
    "TXT": "context: has a text context (non-empty hint)",
    "IMG": "context: has an image",
    "NO": "context: neither a text context nor an image",
    "G1-6": "grades 1–6",
    "G7-12": "grades 7–12",
}
INPUT_PARTS = "QCMLE"
OUTPUT_PARTS = "ALE"
SUPPORTED_FORMATS = (
    "QCM-A", "CQM-A", "QCM-LA", "QCM-EA", "QCM-LEA", "QCM-ELA", "QCM-AL", "QCM-AE", "QCM-ALE",
    "QCM-AEL", "QCML-A", "QCME-A", "QCMLE-A",
)
REQUIRED = {"question": str, "choices": list, "answer": int, "hint": str, "grade": str, "subject": str}


@dataclass(frozen=True)
class Problem:
    pid: str
    question: str
    choices: tuple[str, ...]
    answer: int
    hint: str
    image: str | None
    grade: int
    subject: str
    lecture: str
    solution: str
    split: str

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    @property
    def columns(self) -> list[str]:
        """The paper's columns this problem counts in (TXT and IMG may both apply)."""
        cols = [SUBJECTS[self.subject]]
        if self.hint.strip():
            cols.append("TXT")
        if self.image:
            cols.append("IMG")
        if not self.hint.strip() and not self.image:
            cols.append("NO")
        cols.append("G1-6" if self.grade <= 6 else "G7-12")
        return cols

    def image_path(self) -> str | None:
        """``<split>/<pid>/image.png`` relative to the ScienceQA image root."""
        return f"{self.split}/{self.pid}/{self.image}" if self.image else None


def _problem(pid: str, raw, path: Path) -> Problem:
    where = f"problems file {path}: problem {pid}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
    for key, tp in REQUIRED.items():
        if not isinstance(raw.get(key), tp) or (tp is int and isinstance(raw.get(key), bool)):
            raise DataError(f"{where}: {key} must be a {tp.__name__}, got {raw.get(key)!r}")
    choices = raw["choices"]
    if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: choices must be 2–{len(LETTERS)} strings, got {choices!r}")
    if not 0 <= raw["answer"] < len(choices):
        raise DataError(f"{where}: answer {raw['answer']} is not an index into its {len(choices)} choices")
    if raw["subject"] not in SUBJECTS:
        raise DataError(f"{where}: subject {raw['subject']!r} is not one of {', '.join(SUBJECTS)}")
    grade = raw["grade"]
    if not (grade.startswith("grade") and grade[5:].isdigit() and 1 <= int(grade[5:]) <= 12):
        raise DataError(f"{where}: grade {grade!r} is not grade1..grade12")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        raise DataError(f"{where}: image must be a file name or null, got {image!r}")
    split = raw.get("split")
    if image and not (isinstance(split, str) and split.strip()):
        raise DataError(f"{where}: has image {image!r} but no split (its file is <split>/{pid}/{image}); "
                        f"got split={split!r}")
    return Problem(
        pid=pid, question=raw["question"], choices=tuple(choices), answer=raw["answer"], hint=raw["hint"],
        image=image or None, grade=int(grade[5:]), subject=raw["subject"],
        lecture=str(raw.get("lecture") or ""), solution=str(raw.get("solution") or ""),
        split=str(raw.get("split") or ""),
    )


def load_problems(path: str | Path) -> dict[str, Problem]:
    path = Path(path)
    data = read_json(path, "problems file")
    if not isinstance(data, dict):
        raise DataError(f"problems file {path}: expected an object of pid → problem, got {type(data).__name__}")
    return {str(pid): _problem(str(pid), raw, path) for pid, raw in data.items()}


def load_split(path: str | Path, split: str, problems: dict[str, Problem]) -> list[str]:
    """The pids of ``split``; every one must be a known problem."""
    path = Path(path)
    data = read_json(path, "pid splits file")
    if not isinstance(data, dict):
        raise DataError(f"pid splits file {path}: expected an object of split → pids")
    if split not in data:
        raise DataError(f"pid splits file {path} has no split {split!r} (it has {', '.join(data) or 'none'})")
    pids = [str(p) for p in data[split]]
    unknown = [p for p in pids if p not in problems]
    if unknown:
        raise DataError(
            f"pid splits file {path}: {len(unknown)} pid(s) of split {split!r} are not in the problems file "
            f"(first: {', '.join(unknown[:5])})"
        )
    return pids


def parse_format(fmt: str) -> tuple[str, str]:
    """Validate ``INPUT-OUTPUT`` and return its two halves."""
    inp, sep, out = fmt.partition("-")
    input_ok = set(inp) <= set(INPUT_PARTS) and len(set(inp)) == len(inp) and set("QCM") <= set(inp)
    output_ok = (
        bool(out) and set(out) <= set(OUTPUT_PARTS) and len(set(out)) == len(out)
        and (out.startswith("A") or out.endswith("A"))
    )
    if not (sep and input_ok and output_ok):
        raise DataError(
            f"prompt format {fmt!r}: expected INPUT-OUTPUT with INPUT from {INPUT_PARTS} (Q, C, M once each) "
            f"and OUTPUT from {OUTPUT_PARTS} with A first or last, e.g. {', '.join(SUPPORTED_FORMATS[:5])}"
        )
    return inp, out


def choices_text(problem: Problem) -> str:
    return " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(problem.choices))


def build_input(problem: Problem, inp: str) -> str:
    parts = {
        "Q": f"Question: {problem.question}",
        "C": f"Context: {problem.hint.strip() or 'N/A'}",
        "M": f"Options: {choices_text(problem)}",
        "L": f"Lecture: {problem.lecture.strip()}",
        "E": f"Explanation: {problem.solution.strip()}",
    }
    text = "\n".join(parts[c] for c in inp)
    return text.removeprefix("Question: ").strip()


def build_output(problem: Problem, out: str) -> str:
    answer = f"The answer is {problem.answer_letter}."
    reasons = " ".join(t for t in (problem.lecture.strip() if c == "L" else problem.solution.strip()
                                   for c in out if c != "A") if t)
    if not reasons:
        return answer
    return f"{answer} BECAUSE: {reasons}" if out.startswith("A") else f"{reasons} {answer}"


def build_example(problem: Problem, fmt: str) -> tuple[str, str]:
    """``(user prompt, assistant answer)`` of one problem in format ``fmt`` (no ``<image>``)."""
    inp, out = parse_format(fmt)
    return build_input(problem, inp), build_output(problem, out)
