"""The search-quality commands: ``qkvnas tabulate`` (train every design of a finite space at
every seed) and ``qkvnas replay`` (replay samplers against the table; no training)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.config.study import FidelityConfig


def add_commands(sub: Any) -> None:
    _add_tabulate(sub)
    _add_replay(sub)


def _add_tabulate(sub: Any) -> None:
    p = sub.add_parser("tabulate", help="train every design of a finite space at every seed; write table.parquet")
    p.add_argument("config", nargs="?", help="a table TOML file (kind = \"table\")")
    p.add_argument("--preset", help="a shipped table preset instead of a file: table_quick, table_paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set seeds=[0,1,2] (repeatable)")
    p.add_argument("--executor", choices=["ray", "local"], default="ray",
                   help="Ray Tune trials (default) or one after another in this process")
    p.add_argument("--ray-address", help="attach to this running Ray cluster (default: start a local Ray)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_cmd_tabulate)


def _cmd_tabulate(args: argparse.Namespace) -> int:
    from nas.bench.config import load_table_config
    from nas.bench.table import run_table

    if (args.config is None) == (args.preset is None):
        raise ValueError("give a table file or --preset NAME (one of them)")
    config = load_table_config(args.config or args.preset, args.overrides)
    run = run_table(config, executor=args.executor, address=args.ray_address, progress=not args.quiet)
    if run.engine.interrupted:
        from nas.engine.outcome import interrupted_code

        print(f"interrupted: {run.runs} runs in the table so far; run the same command again to continue")
        return interrupted_code()  # 128 + the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
    print(f"table {config.name}: {run.runs} runs ({run.complete} complete, {run.failed} failed) written to {run.table}")
    return 0


def _add_replay(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay samplers against a table: hypervolume curves, trials to 90/95%% of the front")
    p.add_argument("table", help="a table.parquet, its folder, or the table's name (studies/<name>)")
    p.add_argument("--samplers", default="random,tpe,nsga2,nsga3,gp", help="comma-separated (default: all five)")
    p.add_argument("--trials", type=int, default=40, help="trials per replayed study (default 40)")
    p.add_argument("--repeats", type=int, default=20, help="sampler seeds per sampler (default 20)")
    p.add_argument("--objectives", default="val_loss,kv_cache_bytes_per_token,train_tokens_per_s",
                   help="comma-separated objectives among the table's (default: val loss, KV bytes, training tokens/s)")
    p.add_argument("--seed", type=int, default=0, help="first sampler seed (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="replays in parallel processes (default 1)")
    p.add_argument("--sampler-option", dest="sampler_options", action="append", default=[], metavar="SAMPLER.KEY=VALUE",
                   help="a sampler's keyword argument, the value as TOML, e.g. nsga2.population_size=10 (repeatable)")
    p.add_argument("--scheduler", choices=["none", "mo_asha"], default="none",
                   help="also replay every sampler with this multi-fidelity scheduler, its rungs simulated from the "
                        "learning curves (default none: full budget only)")
    p.add_argument("--rungs", help="with --scheduler: comma-separated fractions of the budget (default 0.111,0.333)")
    p.add_argument("--eta", type=float, help="with --scheduler: a rung keeps the top 1/eta of its trials (default 3)")
    p.add_argument("--tie-break", choices=["crowding", "epsnet"], help="with --scheduler: inside the last front kept "
                   "(default crowding)")
    p.add_argument("--out", default=None, help="output folder (default: replay/ beside the table)")
    p.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from nas.bench.replay import replay_all, write_replay
    from nas.bench.schema import read_table

    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    objectives = [n.strip() for n in args.objectives.split(",") if n.strip()]
    for flag, value in (("--trials", args.trials), ("--repeats", args.repeats), ("--jobs", args.jobs)):
        if value < 1:
            raise ValueError(f"{flag}={value} must be at least 1")
    options, scheduler = sampler_options(args.sampler_options, names), fidelity_flags(args)
    table = read_table(args.table)
    table.check_objectives(objectives)
    result = replay_all(table, samplers=names, trials=args.trials, repeats=args.repeats, objectives=objectives,
                        seed=args.seed, jobs=args.jobs, options=options, scheduler=scheduler)
    out = args.out or (table.path.parent / "replay" if table.path else "replay")
    written = write_replay(result, out)
    print(result.text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def sampler_options(items: list[str], samplers: list[str]) -> dict[str, dict[str, Any]]:
    """``--sampler-option nsga2.population_size=10`` (repeatable) → {"nsga2": {"population_size": 10}};
    the value read as TOML, as ``--set`` reads it."""
    from nas.config.loader import parse_value

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not (eq and dot and name and option):
            raise ValueError(f"--sampler-option {item!r}: write SAMPLER.KEY=VALUE, e.g. nsga2.population_size=10")
        if name not in samplers:
            raise ValueError(f"--sampler-option {item!r}: sampler {name!r} is not among --samplers {samplers}")
        out.setdefault(name, {})[option] = parse_value(text.strip())
    return out


def fidelity_flags(args: argparse.Namespace) -> FidelityConfig | None:
    """The ``[fidelity]`` section of ``--scheduler``, ``--rungs``, ``--eta``, ``--tie-break`` (its
    defaults where a flag is not given); None for ``--scheduler none``."""
    from nas.config.base import validate
    from nas.config.study import FidelityConfig

    given = {k: v for k, v in (("rungs", args.rungs), ("eta", args.eta), ("tie_break", args.tie_break)) if v is not None}
    if args.scheduler == "none":
        if given:
            raise ValueError(f"--{'/--'.join(k.replace('_', '-') for k in given)} need --scheduler mo_asha")
        return None
    if "rungs" in given:
        try:
            given["rungs"] = [float(r) for r in str(given["rungs"]).split(",") if r.strip()]
        except ValueError:
            raise ValueError(f"--rungs {args.rungs!r}: give comma-separated fractions of the budget, e.g. 0.111,0.333") from None
    return validate(FidelityConfig, {"scheduler": args.scheduler, **given}, "replay flags (--scheduler, --rungs, --eta, "
                    "--tie-break) as [fidelity]")
