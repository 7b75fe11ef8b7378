"""``quicktune prior``: what the meta-learned prior believes about a space, before any training.

  quicktune prior --space builtin:paper --json
  quicktune prior --space my_space.yaml --data ./data/flowers --image-size 224

For each model of the space: the predicted seconds of one epoch and the prior's predicted final
score of the space's default knobs (a declared default, else the first choice / False / the midpoint
of a range) with that model, best first. Without --data the meta-features are those of a
CIFAR-10-shaped reference task; without --image-size each model is costed at its native input size.
Then the artifact's domain report: how far the models (descriptor distance to the nearest
meta-training model), the knobs and the meta-features are from what it was meta-trained on, with a
score in [0, 1] (>= 0.7 in domain, < 0.3 out of domain) from which a search starts its trust in the prior.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prior",
        help="explain the meta-learned prior on a space: per model, predicted epoch cost and score",
        description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
    )
    p.add_argument("--space", required=True, help="builtin:NAME or a space YAML file")
    p.add_argument("--meta-artifact", metavar="DIR", help="a `quicktune metatrain` folder (default: the shipped one)")
    p.add_argument("--data", metavar="URI", help="dataset folder or s3:// prefix whose meta-features to use")
    p.add_argument("--image-size", type=int, metavar="PX", help="training resolution (default: each model's native)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    import torch

    from quicktune.optimizer.artifact import ArtifactError, MetaArtifact
    from quicktune.search.prior import PriorError, explain_prior
    from quicktune.space import SpaceError, load_space

    torch.set_num_threads(1)
    try:
        space = load_space(args.space)
        art = MetaArtifact.load(args.meta_artifact) if args.meta_artifact else None
        meta = None
        if args.data:
            from quicktune.data import open_dataset

            meta = {k: float(v) for k, v in open_dataset(args.data).meta_features().items()}
        doc = explain_prior(space, art, meta, args.image_size)
    except (PriorError, ArtifactError, SpaceError, OSError, ValueError) as exc:
        print(f"quicktune prior: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    where = doc["reference_data"] or args.data
    print(f"space {doc['space']}, data: {where}, image size: {doc['image_size']}")
    print(f"default knobs: {json.dumps(doc['default_knobs'], sort_keys=True)}")
    print(f"{'model':44s} {'score':>7s} {'s/epoch':>10s} {'params':>8s} {'GMACs':>9s} {'type':7s} seen")
    for r in doc["models"]:
        seen = "yes" if r["seen_in_meta_training"] else "no"
        print(
            f"{r['model']:44s} {r['prior_score']:7.3f} {r['predicted_epoch_seconds']:10.2f} "
            f"{r['params'] / 1e6:7.1f}M {r['gmacs']:9.3f} {r['arch_type']:7s} {seen}"
        )
    from quicktune.optimizer.domain import DomainReport

    print(DomainReport.from_json(doc["domain"]).summary())
    return 0
