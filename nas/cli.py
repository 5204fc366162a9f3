"""`qkvnas`: a thin command line over the public API. Each subcommand is one `_add_*` (its
arguments) and one `_cmd_*` (the call); errors in user input end with a one-line message, exit 2."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ---- costs ----------------------------------------------------------------------------
def _add_costs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("costs", help="exact parameter, KV-cache and FLOP costs of one design")
    p.add_argument("spec", help="path of a JSON spec")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the KV cache (default bfloat16)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for the FLOP figures (default: context)")
    p.set_defaults(handler=_cmd_costs)


def _cmd_costs(args: argparse.Namespace) -> int:
    from nas.costs import costs
    from search_spaces.spec import ArchSpec

    spec = ArchSpec.load(args.spec)
    _print_json(costs(spec, dtype=args.dtype, seq_len=args.seq_len).to_dict())
    return 0


# ---- train ----------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one design for a token budget and print its results")
    p.add_argument("spec", help="path of a JSON spec")
    p.add_argument("--tokens", type=int, required=True, help="training tokens (whole steps of batch-size x seq-len)")
    p.add_argument("--data", default=None,
                   help="text file, folder of text files, or Parquet/Arrow token shards (default: shipped Shakespeare)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=None, help="training window (default: the spec's context)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from nas.data import load_corpus
    from nas.train import TrainBudget, train
    from search_spaces.spec import ArchSpec

    spec = ArchSpec.load(args.spec)
    corpus = load_corpus(args.data)
    budget = TrainBudget(tokens=args.tokens, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         seed=args.seed, device=args.device)
    result = train(spec, corpus, budget, progress=not args.no_progress)
    out = {"spec_hash": spec.hash, "corpus": corpus.describe(), **result.to_dict()}
    _print_json(_strict_json(out))
    return 0


def _strict_json(obj: object) -> object:
    """NaN and inf (a diverged run) become null: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


# ---- registry -------------------------------------------------------------------------
# One line per subcommand; each helper above owns its own arguments.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_costs,
    _add_train,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkvnas", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as err:  # bad user input: say what to change, no traceback
        print(f"qkvnas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkvnas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
