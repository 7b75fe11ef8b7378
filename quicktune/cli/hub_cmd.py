"""``quicktune hub list``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "hub",
        help="the model catalogue and weight sources",
        description="Models quicktune can finetune, their size, ImageNet accuracy and weights.",
    )
    hsub = parser.add_subparsers(dest="hub_command", metavar="ACTION")
    lst = hsub.add_parser(
        "list",
        help="list the models of a hub",
        description="List the models of the cpu hub (offline), the paper hub (24 models) or all.",
    )
    lst.add_argument("--hub", default="cpu", choices=["cpu", "paper", "all"], help="which hub")
    lst.add_argument("--weights-config", help="weights config file (default $QUICKTUNE_WEIGHTS_CONFIG)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_list)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _list(args: argparse.Namespace) -> int:
    import sys

    from quicktune.hub import HubError, list_models, load_weights_config
    from quicktune.hub.weights import resolve_source

    try:
        config = load_weights_config(args.weights_config)
        rows = []
        for m in list_models(args.hub):
            d = m.to_dict()
            src = resolve_source(m, config)
            d["source"], d["source_uri"] = src.source, src.uri
            rows.append(d)
    except HubError as exc:
        print(f"quicktune hub list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':44s} {'params':>8s} {'top1':>6s} {'size':>5s} {'source':8s} offline")
    for d in rows:
        top1 = f"{d['top1']:.1f}" if d["top1"] is not None else "-"
        offline = "yes" if d["pretrained_available_offline"] else ("random-init" if not d["pretrained"] else "no")
        print(f"{d['name']:44s} {d['params_m']:7.2f}M {top1:>6s} {d['input_size']:5d} {d['source']:8s} {offline}")
    return 0
