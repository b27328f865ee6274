"""The pipelines' reports, each a function of paths and result dicts (no pipeline object):

- the quickstart's ``report.md`` + loss curves, accuracy bars (image vs blind), an answer grid;
- reproduce's ``reproduction.md``: one table row per ablation row + a bar plot.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from llavakit.eval.report import md_table
from llavakit.io import read_jsonl_log


def _read_jsonl(path: Path) -> list[dict]:
    return [r for _, r in read_jsonl_log(path, "log")[0]]  # a torn last line (an interrupted run) is left out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_losses(runs: dict[str, Path], out: Path) -> Path:
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.4), squeeze=False)
    for ax, (title, metrics) in zip(axes[0], runs.items()):
        rows = [r for r in _read_jsonl(metrics) if r.get("loss") is not None]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="#2563eb")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (supervised tokens)")
        ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_accuracy(synth: dict, out: Path) -> Path:
    plt = _pyplot()

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
    return _save(fig, out)


def plot_examples(details: list[dict], questions: dict[str, dict], image_root: Path, out: Path, n: int = 8) -> Path | None:
    """A grid of held-out images with question, model answer and truth (one per category first)."""
    plt = _pyplot()
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
    return _save(fig, out, 100)


def write_report(out: Path, budget_name: str, paths: dict[str, Path], steps: dict[str, dict], model_dir: Path,
                 seed: int = 0) -> dict:
    """Write ``out/report.md`` and its PNGs from a quickstart's ``paths`` and finished ``steps``
    (step name → its recorded result; ``{}`` for one not run)."""
    out_dir = out / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = steps.get("eval", {})
    synth, pope = ev.get("synth", {}), ev.get("pope", {})
    figures = {
        "losses": plot_losses({title: path for title, path in (
            ("stage 1: feature alignment", paths["stage1"] / "metrics.jsonl"),
            ("stage 2: instruction tuning", paths["stage2"] / "metrics.jsonl"))
            if path.is_file() or title.startswith("stage 2")}, out_dir / "loss_curves.png"),
        "accuracy": plot_accuracy(synth, out_dir / "accuracy.png") if synth else None,
    }
    synth_dir = paths["eval"] / "synth"
    questions = {q["question_id"]: q for q in _read_jsonl(synth_dir / "answers_image.questions.jsonl")}
    details = _read_jsonl(synth_dir / "synth_details_image.jsonl")
    figures["examples"] = plot_examples(details, questions, paths["heldout"], out_dir / "examples.png")
    example_image = next((str(paths["heldout"] / q["image"]) for q in questions.values()), None)

    timing_rows = [[name, f"{(steps[name] or {}).get('_seconds', 0):.0f}", f"{(steps[name] or {}).get('_peak_rss_mib', 0):.0f}"]
                   for name in steps]
    total = sum((steps[n] or {}).get("_seconds", 0) for n in steps)
    timing_rows.append(["total", f"{total:.0f}", f"{max((steps[n] or {}).get('_peak_rss_mib', 0) for n in steps):.0f}"])
    lines = [f"# llavakit quickstart — budget `{budget_name}`" + (f", seed {seed}" if seed else ""), ""]
    img_acc = synth.get("conditions", {}).get("image", {}).get("accuracy")
    blind_acc = synth.get("conditions", {}).get("blind", {}).get("accuracy")
    para_acc = synth.get("conditions", {}).get("paraphrased", {}).get("accuracy")
    pope_f1 = {mode: m.get("f1") for mode, m in pope.get("modes", {}).items()}
    summary = (
        f"held-out accuracy {_fmt(img_acc)}% with the image vs {_fmt(blind_acc)}% blind"
        + (f" ({_fmt(para_acc)}% with paraphrased questions)" if para_acc is not None else "") + "; "
        "POPE F1 " + ", ".join(f"{m} {_fmt(v)}" for m, v in pope_f1.items()) + f"; total {total / 60:.1f} min"
    ) if synth else "evaluation not run"
    lines += [summary, "", "## Time and memory", "",
              md_table(["step", "seconds", "peak RSS (MiB)"], timing_rows), ""]
    acc = steps.get("align", {}).get("cell_accuracy")
    if acc:
        lines.append(f"- align: {steps['align'].get('images')} images, final loss {steps['align'].get('final_loss')}, "
                     f"cell accuracy ({steps['align'].get('cell_accuracy_on')}) objects {acc['object_cells']}% / "
                     f"background {acc['background_cells']}%, token norm {steps['align'].get('token_norm')} "
                     f"(target {steps['align'].get('target_norm')})")
    for stage in ("stage1", "stage2"):
        s = steps.get(stage, {})
        if s.get("skipped"):
            lines.append(f"- {stage}: skipped ({s['skipped']})")
        elif s:
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
        pope_md = paths["eval"] / "pope" / "pope.md"
        lines += ["## POPE-style hallucination probe", "",
                  pope_md.read_text(encoding="utf-8").split("\n", 2)[-1].strip() if pope_md.is_file() else "", ""]
    if figures["examples"]:
        lines += ["## Held-out examples", "", "![examples](report/examples.png)", ""]
    lines += ["## Use the model", "", "```bash", f"llavakit chat {model_dir}" + (f" --image {example_image}" if example_image else ""),
              f"llavakit serve {model_dir}", "```", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return {"summary": summary, "report": str(out / "report.md"), "example_image": example_image,
            "figures": {k: str(v) for k, v in figures.items() if v}}


# --- llavakit reproduce ----------------------------------------------------------------------------

def _row_numbers(result: dict) -> dict:
    synth = result.get("synth", {}).get("conditions", {})
    loss = result.get("answer_loss", {})
    f1 = [m.get("f1") for m in result.get("pope", {}).get("modes", {}).values() if m.get("f1") is not None]
    return {
        "acc": synth.get("image", {}).get("accuracy"),
        "blind": synth.get("blind", {}).get("accuracy"),
        "f1": sum(f1) / len(f1) if f1 else None,
        "loss": {k: v["loss"] for k, v in loss.items()},
        "gain": {k: v["image_gain"] for k, v in loss.items()},
        "seconds": result.get("_seconds"),
    }


def _fmt(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_reproduction(out: Path, study_name: str, study, rows, types: tuple[str, ...], results: dict) -> dict:
    """``out/reproduction.md`` (one table: a line per row of ``rows`` with a result) and
    ``out/reproduction.png``; ``study`` is the study's settings (samples, stage2, base budget)."""
    head = ["claim", "row", "synth acc. (%)", "blind (%)", "POPE F1 (mean of 3)"]
    head += [f"{t} loss / image gain" for t in types] + ["minutes"]
    table, numbers = [], {}
    for row in rows:
        if row.name not in results:
            continue
        n = numbers[row.name] = _row_numbers(results[row.name])
        table.append([row.claims, f"`{row.name}`: {row.claim}", _fmt(n["acc"]), _fmt(n["blind"]), _fmt(n["f1"])]
                     + [f"{_fmt(n['loss'].get(t), 3)} / {_fmt(n['gain'].get(t), 3)}" for t in types]
                     + [_fmt((n["seconds"] or 0) / 60)])
    lines = [f"# llavakit reproduce — study `{study_name}` (model `{study.base.model}`)", "",
             f"Same budget per row: {study.samples} stage-2 samples (half vqa), "
             f"stage-2 overrides `{' '.join(study.stage2)}`; held-out split of "
             f"{study.base.heldout_scenes} scenes. Loss: nats per answer token on held-out "
             "template-teacher answers; image gain: loss with a mismatched image minus loss with the "
             "right one (0 = the image is ignored).", "", md_table(head, table), ""]
    clip = results.get("clip-layer")
    if clip:
        lines += ["## (d) ViT feature layer −1 vs −2 (tiny random CLIP: a switch check, no quality claim)", "",
                  md_table(["feature_layer", "features", "stage-1 final loss", "steps"],
                           [[k.replace("layer", ""), "×".join(map(str, v["feature_shape"])), _fmt(v["final_loss"], 4),
                             str(v["steps"])] for k, v in clip.items() if k.startswith("layer")]), "",
                  f"Max |difference| between the two layers' features on the same images: "
                  f"{clip['feature_max_abs_diff']:.4f}.", ""]
    figure = _plot_rows(numbers, out / "reproduction.png") if numbers else None
    if figure:
        lines += ["![rows](reproduction.png)", ""]
    (out / "reproduction.md").write_text("\n".join(lines), encoding="utf-8")
    return {"table": str(out / "reproduction.md"), "figure": str(figure) if figure else None}


def _plot_rows(numbers: dict, out: Path) -> Path:
    plt = _pyplot()

    names = list(numbers)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    acc = [numbers[n]["acc"] or 0 for n in names]
    left.bar(names, acc, color="#2563eb", label="with the image")
    blind = [(i, numbers[n]["blind"]) for i, n in enumerate(names) if numbers[n]["blind"] is not None]
    if blind:
        left.scatter([i for i, _ in blind], [b for _, b in blind], color="#111827", zorder=3, label="blind")
    left.set_ylabel("held-out synth accuracy (%)")
    left.legend(loc="lower right", fontsize=8)
    gains = [numbers[n]["gain"].get("all", 0) for n in names]
    right.bar(names, gains, color="#16a34a")
    right.set_ylabel("image gain (nats/token)")
    right.set_title("held-out answers: mismatched − right image")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)
