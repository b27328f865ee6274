"""The `llavakit` command: one verb per capability, each in its own module.

Verb modules are imported only when their verb runs, so `llavakit --help` is instant. A verb module
exposes ``add_arguments(parser)`` and ``run(args) -> int | None``. A key of two words is a sub-verb
of a group (``llavakit eval synth ...``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llavakit import progress
from llavakit.errors import LlavakitError

# verb -> (module, one-line help); "group sub" is a sub-verb (`llavakit eval synth ...`)
VERBS: dict[str, tuple[str, str]] = {
    "quickstart": ("llavakit.pipelines.quickstart", "scenes → data → stage 1 → stage 2 → eval → report, on the embedded default"),
    "reproduce": ("llavakit.pipelines.reproduce", "the paper's ablations in miniature on the synthetic world"),
    "info": ("llavakit.model.info", "print a composed model: parameters per part, image tokens, context length"),
    "scenes": ("llavakit.datagen.scenes_cli", "render a synthetic annotated world in COCO format"),
    "datagen": ("llavakit.datagen.cli", "generate LLaVA instruction data from captions + boxes with a teacher LLM"),
    "data inspect": ("llavakit.data.inspect", "counts, lengths, bad records and supervised spans of a LLaVA data file"),
    "data scienceqa": ("llavakit.eval.scienceqa_convert", "convert official ScienceQA files to LLaVA JSON"),
    "align": ("llavakit.train.align", "token-level projector alignment from box annotations (before stage 1)"),
    "train": ("llavakit.train.cli", "stage 1 / stage 2 / finetune training"),
    "chat": ("llavakit.serve.chat", "multi-turn chat about an image in the terminal"),
    "infer": ("llavakit.serve.infer", "batched inference over a model_vqa questions JSONL"),
    "serve": ("llavakit.serve.cli", "OpenAI-compatible API server and web chat page"),
    "eval synth": ("llavakit.eval.synth", "exact-answer benchmark on held-out synthetic scenes (+ --blind)"),
    "eval pope": ("llavakit.eval.pope", "POPE-style object hallucination probe"),
    "eval llava-bench": ("llavakit.eval.llava_bench", "LLaVA-Bench judge protocol: relative score"),
    "eval scienceqa": ("llavakit.eval.scienceqa", "ScienceQA accuracy by subject/context/grade, ensembles"),
    "export": ("llavakit.interop.cli", "export a llavakit checkpoint to other formats"),
    "merge-lora": ("llavakit.interop.merge", "merge a PEFT LoRA adapter into a plain llavakit checkpoint"),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (when it has a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default" in text.lower() or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._VersionAction)):
            return text
        return f"{text} (default: %(default)s)".strip()


def _add_verb(subparsers, name: str, module: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
    mod = importlib.import_module(module)
    mod.add_arguments(parser)
    for action in parser._actions:  # argparse shows no line for an option without help
        if action.help is None and action.option_strings:
            action.help = ""
            if action.default not in (None, False):
                action.help = "(default: %(default)s)"
    if "--quiet" not in parser._option_string_actions:  # one --quiet on every verb
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(_run=mod.run)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavakit", description="Visual instruction tuning (LLaVA), end to end.")
    parser.add_argument("--version", action="version", version=f"llavakit {__import__('llavakit').__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    # Import only the chosen verb's module; list the others by name and help.
    words = [a for a in argv if not a.startswith("-")][:2]
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in VERBS.items():
        group, _, sub = name.partition(" ")
        if sub and group not in groups:
            subs = [key.partition(" ")[2] for key in VERBS if key.startswith(group + " ")]
            group_help = "sub-verbs: " + ", ".join(subs)
            gparser = subparsers.add_parser(group, help=group_help, description=group_help)
            gparser.set_defaults(_parser=gparser)
            groups[group] = gparser.add_subparsers(dest="subverb", metavar="SUBVERB")
        where, leaf = (groups[group], sub) if sub else (subparsers, name)
        if name.split() == words[:len(name.split())]:
            _add_verb(where, leaf, module, help_text)
        else:
            where.add_parser(leaf, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:  # `llavakit` or a group verb alone (`llavakit eval`): its help
        (getattr(args, "_parser", None) or parser).print_help()
        return 0
    try:
        with progress.quiet(getattr(args, "quiet", False)):  # bars also go off when stderr is not a terminal
            code = run(args)
    except LlavakitError as exc:
        print(f"llavakit {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
