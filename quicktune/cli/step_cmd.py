"""``quicktune step``: a thin shell over :mod:`quicktune.finetune.entry`, where the step's options
and its in-process entry point live (the local backend's fork server calls that module directly,
without the rest of the command line)."""

from __future__ import annotations

import argparse
from typing import Any

from quicktune.finetune import entry


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "step",
        help="finetune one config up to an epoch (resuming from its checkpoint)",
        description=entry.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    entry.add_step_arguments(p)
    p.set_defaults(handler=entry.run_parsed)
