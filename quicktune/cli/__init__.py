"""The ``quicktune`` command.

Each subcommand lives in its own module under ``quicktune.cli`` and exposes
``register(subparsers) -> None``; heavy imports happen inside the handler so that
``quicktune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Iterator, Sequence

# Modules that provide subcommands, in the order they appear in --help.
_SUBCOMMAND_MODULES = [
    "quicktune.cli.search_cmd",
    "quicktune.cli.step_cmd",
    "quicktune.cli.data_cmd",
    "quicktune.cli.hub_cmd",
    "quicktune.cli.bench_cmd",
    "quicktune.cli.metadataset_cmd",
    "quicktune.cli.metatrain_cmd",
    "quicktune.cli.prior_cmd",
    "quicktune.cli.space_cmd",
    "quicktune.cli.watch_cmd",
    "quicktune.cli.demo_cmd",
]

DESCRIPTION = """\
Quick-Tune for Kubeflow: find which pretrained timm model to finetune, and how.

Given a labelled image dataset (a folder or s3:// prefix) and a budget, quicktune runs a
meta-learned, cost-aware, freeze-thaw Bayesian optimisation over pretrained models and their
finetuning hyperparameters, one epoch at a time, records everything in MLflow and registers the
winning model.

Typical use:
  quicktune data import digits ./data/digits        # a real dataset that ships in a package
  quicktune search --data ./data/digits --budget 10m --model-name digits-classifier
  quicktune step --config cfg.json --data ./data/digits --to-epoch 2 --checkpoint-dir ./ckpt --out r.json
  quicktune bench --table curves.parquet --optimizer quicktune --optimizer random --seeds 10 --out out/
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quicktune", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a subcommand not built yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def _value_options(parser: argparse.ArgumentParser) -> Iterator[str]:
    """The ``--long`` option strings, in ``parser`` and its subcommands, that take exactly one value."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _value_options(sub)
        elif isinstance(action, (argparse._StoreAction, argparse._AppendAction)) and action.nargs is None:
            yield from (o for o in action.option_strings if o.startswith("--"))


_DASH_VALUE = re.compile(r"^-[0-9.]")


def join_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--budget -5m`` -> ``--budget=-5m`` for every option that takes one value.

    Why: argparse takes a token starting with ``-`` for an option unless it looks like a negative
    *number*, so ``--budget -5m`` failed with "expected one argument" instead of the option's own
    message ("a duration must be positive"). Only values that start like a number (``-5m``,
    ``-1h30m``, ``-.5``) are joined; an option name after an option still fails as before."""
    takes_value = set(_value_options(parser))
    out: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        if tok in takes_value and i + 1 < len(argv) and _DASH_VALUE.match(argv[i + 1]):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dash_values(parser, sys.argv[1:] if argv is None else argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
