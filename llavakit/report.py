"""The quickstart report: report.md + loss curves, accuracy bars (image vs blind), an answer grid."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from llavakit.eval.report import md_table


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
    return rows


def plot_losses(runs: dict[str, Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.4), squeeze=False)
    for ax, (title, metrics) in zip(axes[0], runs.items()):
        rows = [r for r in _read_jsonl(metrics) if r.get("loss") is not None]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="#2563eb")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (supervised tokens)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy(synth: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, blind = synth["conditions"]["image"], synth["conditions"].get("blind")
    cats = list(image["categories"]) + ["overall"]
    get = lambda cond, c: cond["accuracy"] if c == "overall" else cond["categories"][c]["accuracy"]  # noqa: E731
    xs = range(len(cats))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [get(image, c) for c in cats], width, label="with the image", color="#2563eb")
    if blind:
        ax.bar([x + width / 2 for x in xs], [get(blind, c) for c in cats], width, label="blind (blank image)", color="#9ca3af")
    ax.set_xticks(list(xs), cats)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("held-out synthetic scenes: exact-answer accuracy")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_examples(details: list[dict], questions: dict[str, dict], image_root: Path, out: Path, n: int = 8) -> Path | None:
    """A grid of held-out images with question, model answer and truth (one per category first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    picked, seen = [], set()
    for row in details:  # one per category, then fill up
        if row["category"] not in seen:
            picked.append(row)
            seen.add(row["category"])
    picked += [r for r in details if r not in picked][: max(0, n - len(picked))]
    picked = picked[:n]
    if not picked:
        return None
    cols = 4
    rows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 4.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, picked):
        q = questions.get(row["question_id"], {})
        path = image_root / q.get("image", "")
        if path.is_file():
            ax.imshow(Image.open(path))
        question = row["question"].split("\n")[0]
        mark = "✓" if row["correct"] else "✗"
        ax.set_title(
            "\n".join(textwrap.wrap(question, 38)) + f"\nmodel: {row['prediction'][:30]!s}  {mark}\ntruth: {row['answer']}",
            fontsize=8, loc="left",
        )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(qs) -> dict:
    """Write ``OUT/report.md`` and its PNGs from the finished steps of a Quickstart."""
    out_dir = qs.out / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = {name: qs.done(name) or {} for name in ("scenes", "data", "stage1", "stage2", "eval")}
    ev = steps["eval"]
    synth, pope = ev.get("synth", {}), ev.get("pope", {})
    figures = {
        "losses": plot_losses({"stage 1: feature alignment": qs.paths["stage1"] / "metrics.jsonl",
                               "stage 2: instruction tuning": qs.paths["stage2"] / "metrics.jsonl"},
                              out_dir / "loss_curves.png"),
        "accuracy": plot_accuracy(synth, out_dir / "accuracy.png") if synth else None,
    }
    synth_dir = qs.paths["eval"] / "synth"
    questions = {q["question_id"]: q for q in _read_jsonl(synth_dir / "answers_image.questions.jsonl")}
    details = _read_jsonl(synth_dir / "synth_details_image.jsonl")
    figures["examples"] = plot_examples(details, questions, qs.paths["heldout"], out_dir / "examples.png")
    example_image = next((str(qs.paths["heldout"] / q["image"]) for q in questions.values()), None)

    timing_rows = [[name, f"{(steps[name] or {}).get('_seconds', 0):.0f}", f"{(steps[name] or {}).get('_peak_rss_mib', 0):.0f}"]
                   for name in steps]
    total = sum((steps[n] or {}).get("_seconds", 0) for n in steps)
    timing_rows.append(["total", f"{total:.0f}", f"{max((steps[n] or {}).get('_peak_rss_mib', 0) for n in steps):.0f}"])
    lines = [f"# llavakit quickstart — preset `{qs.preset}`", ""]
    img_acc = synth.get("conditions", {}).get("image", {}).get("accuracy")
    blind_acc = synth.get("conditions", {}).get("blind", {}).get("accuracy")
    pope_f1 = {mode: m.get("f1") for mode, m in pope.get("modes", {}).items()}
    summary = (
        f"held-out accuracy {img_acc}% with the image vs {blind_acc}% blind; "
        f"POPE F1 " + ", ".join(f"{m} {v}" for m, v in pope_f1.items()) + f"; total {total / 60:.1f} min"
    ) if synth else "evaluation not run"
    lines += [summary, "", "## Time and memory", "",
              md_table(["step", "seconds", "peak RSS (MiB)"], timing_rows), ""]
    for stage in ("stage1", "stage2"):
        s = steps[stage]
        if s:
            lines.append(f"- {stage}: {s.get('steps')} steps, {s.get('samples')} samples, global batch "
                         f"{s.get('global_batch')}, final loss {s.get('final_loss') and round(s['final_loss'], 4)}, "
                         f"{s.get('seconds')} s")
    lines += ["", "![loss curves](report/loss_curves.png)", ""]
    if synth:
        lines += ["## Held-out synthetic benchmark (with the image vs blind)", "",
                  (synth_dir / "synth.md").read_text(encoding="utf-8").split("\n", 2)[-1].strip()
                  if (synth_dir / "synth.md").is_file() else "", "",
                  "![accuracy](report/accuracy.png)", ""]
    if pope:
        pope_md = qs.paths["eval"] / "pope" / "pope.md"
        lines += ["## POPE-style hallucination probe", "",
                  pope_md.read_text(encoding="utf-8").split("\n", 2)[-1].strip() if pope_md.is_file() else "", ""]
    if figures["examples"]:
        lines += ["## Held-out examples", "", "![examples](report/examples.png)", ""]
    lines += ["## Use the model", "", "```bash", f"llavakit chat {qs.model_dir}" + (f" --image {example_image}" if example_image else ""),
              f"llavakit serve {qs.model_dir}", "```", ""]
    (qs.out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return {"summary": summary, "report": str(qs.out / "report.md"), "example_image": example_image,
            "figures": {k: str(v) for k, v in figures.items() if v}}
