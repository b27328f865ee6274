"""Shipped training configs — recipes (``llavakit/train/configs/*.yaml``, ``--recipe NAME``) — and config assembly.

A YAML config may start with ``inherit: NAME`` — a shipped recipe name or a path relative to the
file — and then only states what differs. :func:`build_config` resolves the chain, applies the
``key=value`` overrides in order and returns a typed :class:`TrainConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from llavakit.config import from_dict, load_yaml, merge, parse_override
from llavakit.errors import ConfigError
from llavakit.train.config import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs"
ACCELERATE_DIR = CONFIG_DIR / "accelerate"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if name not in recipe_names():
        raise ConfigError(f"unknown training recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    return path


def accelerate_configs() -> dict[str, Path]:
    """Shipped ``accelerate launch --config_file`` files by name (ddp, fsdp, deepspeed-zero2, ...)."""
    return {p.stem: p for p in sorted(ACCELERATE_DIR.glob("*.yaml"))}


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p.name) for p in (*seen, path))
        raise ConfigError(f"config inheritance loops: {chain}")
    return _inherit(load_yaml(path), path.parent, (*seen, path), str(path))


def _inherit(data: dict, base_dir: Path, seen: tuple[Path, ...], where: str) -> dict:
    """``data`` merged over what its ``inherit:`` names (a path relative to ``base_dir`` or a shipped recipe)."""
    data = dict(data)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: inherit must be a recipe name or a path, got {parent!r}")
    local = base_dir / parent
    parent_path = local if local.suffix in (".yaml", ".yml") and local.is_file() else recipe_path(parent)
    return merge(_resolve(parent_path, seen), data)


def load_config_dict(config: str | Path | None = None, recipe: str | None = None) -> dict:
    """The merged dict of a config file or a shipped recipe (with its ``inherit`` chain)."""
    if config is not None and recipe is not None:
        raise ConfigError("give either a config file or a recipe, not both")
    if recipe is not None:
        return _resolve(recipe_path(recipe))
    if config is not None:
        return _resolve(Path(config))
    return {}


def build_config(
    config: str | Path | dict | None = None,
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    stage: int | str | None = None,
) -> TrainConfig:
    """Config file / recipe / dict + ``key=value`` overrides (+ ``stage``) → a typed TrainConfig."""
    if isinstance(config, dict):
        data = _inherit(config, Path.cwd(), (), "config")
    else:
        data = load_config_dict(config, recipe)
    for text in overrides:
        data = merge(data, parse_override(text))
    if stage is not None:
        stage = parse_stage(stage)
        if "stage" in data and data["stage"] != stage:
            raise ConfigError(
                f"--stage {stage} contradicts the config's stage: {data['stage']} (drop one of them)"
            )
        data["stage"] = stage
    elif "stage" not in data:
        raise ConfigError("the stage is not set: pass --stage 1|2|finetune or put stage: in the config")
    return from_dict(TrainConfig, data)


def parse_stage(value: int | str) -> int | str:
    text = str(value).strip()
    if text in ("1", "2"):
        return int(text)
    if text == "finetune":
        return text
    raise ConfigError(f"stage {value!r} is not one of 1, 2, finetune")
