"""``llavakit train``: stage 1 / stage 2 / finetune from a YAML config or a shipped recipe (a named config).

    llavakit train --stage 1 --recipe nano-stage1 data.path=captions.json data.image_folder=images
    llavakit train --stage 2 --config my.yaml projector=runs/nano-stage1/projector optim.lr=1e-4
    llavakit train --config my.yaml --resume          # continue from the latest checkpoint
    llavakit train --list-recipes                     # shipped configs + accelerate launch files
    llavakit train --list-keys                        # every config key, its type and default

Multi-process: ``torchrun --nproc_per_node N -m llavakit train ...`` or ``accelerate launch
--config_file $(llavakit train --accelerate-config ddp) -m llavakit train ...``.
"""

from __future__ import annotations

import argparse
import json

from llavakit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", help="1 (projector only), 2 (projector + LLM or LoRA) or finetune")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE.yaml", help="a training config (may 'inherit:' a recipe)")
    src.add_argument("--recipe", metavar="NAME", help="a shipped config (recipe), e.g. nano-stage1 (see --list-recipes)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print it and the batch plan, and exit (loads no model)")
    parser.add_argument("--list-recipes", action="store_true", help="list shipped configs and accelerate files")
    parser.add_argument("--list-keys", action="store_true", help="list every config key with its type and default")
    parser.add_argument("--accelerate-config", metavar="NAME",
                        help="print the path of a shipped accelerate config (ddp, fsdp, deepspeed-zero2, ...)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.path=train.json optim.lr=1e-4 per_device_batch_size=4")


def run(args) -> int:
    from llavakit.train.recipes import accelerate_configs, build_config, load_config_dict, recipe_names

    if args.list_keys:
        from llavakit.config import list_keys
        from llavakit.train.config import TrainConfig

        for key, kind, default in list_keys(TrainConfig):
            print(f"{key:38s} {kind:44s} {default!r}")
        return 0
    if args.list_recipes:
        for name in recipe_names():
            data = load_config_dict(recipe=name)
            print(f"{name:28s} stage {data.get('stage', '?')!s:9s} model {data.get('model', '?')}")
        for name, path in accelerate_configs().items():
            print(f"accelerate: {name:16s} {path}")
        return 0
    if args.accelerate_config:
        configs = accelerate_configs()
        if args.accelerate_config not in configs:
            raise ConfigError(f"unknown accelerate config {args.accelerate_config!r}; shipped: {', '.join(configs)}")
        print(configs[args.accelerate_config])
        return 0
    if args.config is None and args.recipe is None and not args.overrides:
        raise ConfigError("give --config FILE.yaml or --recipe NAME (see --list-recipes), plus KEY=VALUE overrides")
    cfg = build_config(args.config, args.recipe, args.overrides, args.stage)
    if args.check:
        from llavakit.config import to_dict
        from llavakit.train.precision import make_accelerator

        _, plan, _ = make_accelerator(cfg)
        print(json.dumps(to_dict(cfg), indent=2))
        print(f"ok: stage {cfg.stage}, {plan.describe()}")
        return 0
    from llavakit.train.runner import run as train

    result = train(cfg, resume=args.resume)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"artifact: {result.artifact}\nfinal loss: {result.final_loss}\nloss curve: {result.loss_plot}")
    return 0
