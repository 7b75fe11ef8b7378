"""``quicktune space``: check a search-space file and look at what it samples.

  quicktune space validate my_space.yaml
  quicktune space sample builtin:cpu -n 5 --seed 0

``validate`` exits 0 and prints a one-line summary when the file is valid, 1 with the errors
(naming the file and parameter) when it is not. Valid means well formed *and* trainable: every
parameter is a knob of the finetuning step (docs/search-space.md), every value is one the step
accepts (e.g. ``lr > 0``, ``batch_size >= 1``, fractions in [0, 1], known optimizers and
schedules), and every model is known to the model hub / timm (no download). ``--syntax-only``
checks the format alone (for spaces used with learning-curve tables, not with the step).
``sample`` prints one JSON object per line:
``{"config_id": ..., "config": {...}}`` with only the active parameters (conditions respected).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "space",
        help="validate a search-space YAML file or sample configs from it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="space_command", metavar="ACTION")
    v = sub.add_parser("validate", help="check a space file; exit 1 with the error if it is invalid")
    v.add_argument("file", metavar="FILE", help="space YAML file (or builtin:NAME)")
    v.add_argument(
        "--syntax-only",
        action="store_true",
        help="check the format only, not that the finetuning step accepts every knob, value and model",
    )
    v.set_defaults(handler=_validate)
    s = sub.add_parser(
        "sample",
        help="print N distinct configs sampled from a space, one JSON per line",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("file", metavar="FILE", help="space YAML file or builtin:NAME (builtin:paper, builtin:cpu)")
    s.add_argument("-n", type=int, default=5, help="number of configs")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.set_defaults(handler=_sample)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _load(ref: str):
    from quicktune.space import load_space

    return load_space(ref)


def _validate(args: argparse.Namespace) -> int:
    from quicktune.space import SpaceError

    try:
        space = _load(args.file)
        if not args.syntax_only:
            from quicktune.finetune.space_check import check_space_for_step

            check_space_for_step(space, source=args.file)
    except SpaceError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    n_cond = sum(1 for p in space.params if p.only_active_with)
    print(
        f"ok: space {space.name!r} from {args.file}: {len(space.params)} parameters "
        f"({n_cond} conditional), model parameter {space.model_param!r}"
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from quicktune.space import SpaceError, config_id

    if args.n < 1:
        print("quicktune space sample: -n must be >= 1", file=sys.stderr)
        return 2
    try:
        space = _load(args.file)
    except SpaceError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    for c in space.sample_many(args.n, np.random.default_rng(args.seed)):
        print(json.dumps({"config_id": config_id(c), "config": c}, sort_keys=False))
    return 0
