"""Two-stage training on accelerate: stage 1 (projector), stage 2 (projector + LLM / LoRA), finetune.

    from llavakit.train import run, build_config
    result = run(build_config(recipe="nano-stage1", overrides=["data.path=caps.json", "data.image_folder=img"]))
    result.artifact, result.final_loss, result.seconds
"""

from llavakit.train.config import TrainConfig, validate
from llavakit.train.recipes import build_config, recipe_names


def run(config, resume: bool = False, overrides=(), stage=None):
    """Train one stage; see :func:`llavakit.train.runner.run`."""
    from llavakit.train.runner import run as _run

    return _run(config, resume=resume, overrides=overrides, stage=stage)


__all__ = ["TrainConfig", "build_config", "recipe_names", "run", "validate"]
