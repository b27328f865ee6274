"""`llavakit info PRESET|DIR`: the composed model, part by part."""

from __future__ import annotations

import argparse
import io


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a preset name (tiny-random, nano, ...) or a checkpoint directory")
    parser.add_argument("--projector", help="a stage-1 projector artifact to load on top")


def _count(module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def describe(model) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llavakit model: {model.config.name}")
    for col in ("part", "what", "parameters", "trainable", "frozen"):
        table.add_column(col, justify="right" if col in ("parameters", "trainable", "frozen") else "left")
    cfg = model.config
    lm_cfg = model.language_model.config
    parts = [
        ("vision tower", f"{cfg.vision.kind} {cfg.vision.name_or_path or ''}".strip(), model.vision_tower),
        ("projector", cfg.projector.kind, model.projector),
        ("language model", f"{lm_cfg.model_type} ({cfg.lm.kind} {cfg.lm.name_or_path or ''})".strip(), model.language_model),
    ]
    total_all = trainable_all = 0
    for name, what, module in parts:
        total, trainable = _count(module)
        total_all, trainable_all = total_all + total, trainable_all + trainable
        table.add_row(name, what, f"{total:,}", f"{trainable:,}", f"{total - trainable:,}")
    table.add_row("total", "", f"{total_all:,}", f"{trainable_all:,}", f"{total_all - trainable_all:,}")
    buffer = io.StringIO()
    Console(file=buffer, width=110).print(table)
    tower = model.vision_tower
    lines = [
        buffer.getvalue().rstrip(),
        f"image tokens per image : {tower.num_tokens} x {tower.hidden_size} "
        f"(input {tower.image_size}px, mode {cfg.vision.image_mode}, feature layer {cfg.vision.feature_layer}, "
        f"{cfg.vision.feature_select})" + (f"; said as {model.num_image_tokens} word tokens of objects "
                                           "(projector.objects)" if cfg.projector.objects else ""),
        f"LM context length      : {getattr(lm_cfg, 'max_position_embeddings', 'unknown')} tokens, "
        f"hidden size {model.language_model.get_input_embeddings().weight.shape[1]}, dtype {model.dtype}",
        f"template               : {cfg.template} (stop {model.processor.stop_str!r}), "
        f"image token {cfg.image_token} = id {model.image_token_id}",
        "trainable counts above are as loaded; training stages set them (llavakit train).",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from llavakit.model.checkpoint import load_model

    model = load_model(args.model, projector=args.projector)
    print(describe(model))
    return 0
