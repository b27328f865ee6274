"""The paper's "GPT-4 as the judge" ensemble for ScienceQA.

Where the model and a second predictor (e.g. text-only GPT-4) pick different options, a judge
model gets the question, its context and options and both answers, and gives its own final answer
("The answer is X."). Where they agree, or only one of them produced an option, no judge is
needed: the agreed / the only option is used (both failed → FAILED). A judge reply with no
readable option is re-asked (``retries``), then the model's own prediction is kept and the
problem is listed in ``judge_unparseable``; a request that failed for good keeps the model's
prediction too and is listed in ``judge_failed`` (and asked again on the next run). Replies are
cached in ``scienceqa_judge.jsonl``.
"""

from __future__ import annotations

from pathlib import Path

from llavakit.eval.judge import Ask, ask_all
from llavakit.eval.records import JsonlCache
from llavakit.eval.scienceqa_data import LETTERS, Problem, choices_text
from llavakit.eval.scienceqa_score import FAILED, extract_choice

JUDGE_SYSTEM = "You are an expert teacher who checks answers to multiple-choice science questions."


def judge_prompt(problem: Problem, answer_1: str, answer_2: str) -> str:
    image_note = "\nThe problem also shows an image, which you cannot see." if problem.image else ""
    return (
        f"Question: {problem.question}\nContext: {problem.hint.strip() or 'N/A'}\n"
        f"Options: {choices_text(problem)}{image_note}\n\n"
        f"Two solvers answered differently.\nSolver 1: {answer_1.strip()}\nSolver 2: {answer_2.strip()}\n\n"
        "Think about the question and both answers, then decide which option is correct (it may be one "
        "neither solver chose). End your reply with \"The answer is X.\" where X is the option's letter."
    )


def judge_ensemble(client, problems: dict[str, Problem], primary: dict[str, str], primary_text: dict[str, str],
                   other: dict[str, str], other_text: dict[str, str], out_dir: Path, retries: int = 2,
                   progress: bool = True) -> tuple[dict[str, str], dict]:
    """``({pid: letter|FAILED}, stats)`` over the primary's pids."""
    final: dict[str, str] = {}
    disputed = []
    for pid, mine in primary.items():
        theirs = other.get(pid, FAILED)
        if mine == theirs or theirs == FAILED:
            final[pid] = mine
        elif mine == FAILED:
            final[pid] = theirs
        else:
            disputed.append(pid)
    # keyed by both predictions and the judge model too: new answers files or another judge get fresh decisions
    judge_model = client.cfg.model
    cache = JsonlCache(Path(out_dir) / "scienceqa_judge.jsonl",
                       key=lambda r: (r["pid"], r["primary"], r["other"], r.get("judge_model")))
    asks = []
    for pid in disputed:
        prob = problems[pid]
        prompt = judge_prompt(prob, primary_text.get(pid) or f"The answer is {primary[pid]}.",
                              other_text.get(pid) or f"The answer is {other[pid]}.")
        asks.append(Ask(
            (pid, primary[pid], other[pid], judge_model),
            [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}],
            {"pid": pid, "primary": primary[pid], "other": other[pid], "judge_model": judge_model},
            parse=lambda text, c=prob.choices: extract_choice(text, c),
            reminder=("Please end your reply with \"The answer is X.\" where X is one of "
                      f"{', '.join(LETTERS[:len(prob.choices)])}."),
        ))
    outcome = ask_all(client, asks, lambda text: None, cache, "", retries, "judge", progress)
    reasons = {key[0]: why for key, why in outcome.failed}
    unparseable, failed = [], []
    for pid in disputed:
        rec = cache.get((pid, primary[pid], other[pid], judge_model))
        if rec is None:
            failed.append(pid)
            final[pid] = primary[pid]
        elif rec["parsed"] is None:
            unparseable.append(pid)
            final[pid] = primary[pid]
        else:
            final[pid] = rec["parsed"]
    stats = {
        "disputed": len(disputed),
        "judge_sided_with_model": sum(1 for p in disputed if final[p] == primary[p] and p not in failed + unparseable),
        "judge_sided_with_other": sum(1 for p in disputed if final[p] == other[p]),
        "judge_chose_neither": sum(1 for p in disputed if final[p] not in (primary[p], other[p])),
        "judge_unparseable": unparseable,
        "judge_failed": [[p, reasons.get(p, "failed")] for p in failed],
    }
    return final, stats
