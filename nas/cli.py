"""`qkvnas`: a thin command line over the public API. Each subcommand is one `_add_*` (its
arguments) and one `_cmd_*` (the call); errors in user input end with a one-line message, exit 2."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ---- flags whose defaults are a dataclass's ------------------------------------------------
# A flag that sets a field of one of these defaults to None ("not given"): the command passes
# only the flags given, so the dataclass default applies and is written once, in the dataclass.
TRAIN = "nas.train:TrainBudget"
MEASURE = "nas.measure:MeasureSettings"
PROBE = "nas.probing:ProbeBudget"


def _flag(p: argparse.ArgumentParser, flag: str, owner: str, **kwargs: Any) -> None:
    """``flag`` for the field of the same name of ``owner``; its help shows the field's default."""
    action = p.add_argument(flag, default=None, **kwargs)
    action.default_of = owner  # type: ignore[attr-defined]  # read by _HelpFormatter


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among ``names`` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _field_default(owner: str, name: str) -> object:
    module, _, cls = owner.partition(":")
    field = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}[name]
    return field.default


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default X)" to a ``_flag``'s help, X read from its dataclass when help is shown
    (so that parsing a command line never imports torch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        owner = getattr(action, "default_of", None)
        if owner is None:
            return action.help
        default = _field_default(owner, action.dest)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        return f"{action.help} (default {shown})"


class _Parser(argparse.ArgumentParser):
    """The parser of qkvnas and of each subcommand (subparsers take their parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


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
                   help="text file, folder of text files, Parquet/Arrow token shards or nanoGPT's train.bin/val.bin "
                        "(default: shipped Shakespeare)")
    p.add_argument("--tokenizer", default=None,
                   help="bpe:<vocab> (trained on the training text, cached) or a tokenizer.json (default: bytes)")
    _flag(p, "--batch-size", TRAIN, type=int, help="sequences per step")
    p.add_argument("--seq-len", type=int, help="training window (default: the spec's context)")
    _flag(p, "--lr", TRAIN, type=float, help="peak learning rate")
    _flag(p, "--seed", TRAIN, type=int, help="seed of the weights and batches")
    _flag(p, "--device", TRAIN, help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the model (its compile time is reported apart as compile_s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--save", metavar="DIR", default=None,
                   help="write the trained weights (safetensors), the spec and the training record into DIR")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from nas.data import load_corpus
    from nas.device import resolve_device
    from nas.measure.fits import check_train_fits
    from nas.train import TrainBudget, train
    from search_spaces.spec import ArchSpec

    spec = ArchSpec.load(args.spec)
    budget = TrainBudget(tokens=args.tokens, **_given(args, "batch_size", "seq_len", "lr", "seed", "device", "compile"))
    check_train_fits(spec, batch=budget.batch_size, seq_len=budget.seq_len, device=resolve_device(budget.device))
    if args.save is not None:
        from nas.weights_cli import writable_folder

        writable_folder(args.save, "--save")
    corpus = load_corpus(args.data, tokenizer=args.tokenizer)
    trained: list[object] = []
    result = train(spec, corpus, budget, progress=not args.no_progress, on_trained=trained.append)
    out = {"spec_hash": spec.hash, "corpus": corpus.describe(), **result.to_dict()}
    if args.save is not None:
        from nas.weights import save_model

        record = _strict_json({k: v for k, v in out.items() if k not in ("train_losses", "grad_norms")})
        out["saved"] = str(save_model(trained[0], spec, args.save, record=record))  # type: ignore[arg-type]
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


# ---- measure --------------------------------------------------------------------------
def _add_measure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("measure", help="measure one design on this machine: throughput, memory, KV cache, energy, MFU")
    p.add_argument("spec", help="path of a JSON spec")
    _flag(p, "--batch-size", MEASURE, type=int, help="training batch")
    p.add_argument("--seq-len", type=int, help="training sequence length (default: the spec's context)")
    p.add_argument("--decode-contexts", help="comma-separated cache lengths, e.g. 512,2048 (default: context)")
    _flag(p, "--decode-batch", MEASURE, type=int, help="batch of prefill and decode")
    _flag(p, "--decode-tokens", MEASURE, type=int, help="tokens decoded per timed call")
    _flag(p, "--warmup", MEASURE, type=int, help="untimed calls before the repeats")
    _flag(p, "--repeats", MEASURE, type=int, help="timed repeats (the median is kept)")
    _flag(p, "--device", MEASURE, help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    _flag(p, "--dtype", MEASURE, choices=["float32", "bfloat16", "float16"], help="autocast dtype (float32: no autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sdpa-backend", choices=["math", "flash", "efficient", "cudnn"])
    p.add_argument("--threads", type=int, help="torch threads while measuring (default: leave)")
    _flag(p, "--include", MEASURE, help="comma-separated phases to measure")
    p.set_defaults(handler=_cmd_measure)


def _cmd_measure(args: argparse.Namespace) -> int:
    from nas.measure import MeasureSettings, measure
    from search_spaces.spec import ArchSpec

    spec = ArchSpec.load(args.spec)
    given = _given(args, "batch_size", "seq_len", "decode_batch", "decode_tokens", "warmup", "repeats", "device",
                   "dtype", "sdpa_backend", "threads")
    if args.include is not None:
        given["include"] = tuple(x.strip() for x in args.include.split(",") if x.strip())
    settings = MeasureSettings(**given, decode_contexts=_int_list("--decode-contexts", args.decode_contexts),
                               compile=args.compile)
    result = measure(spec, settings)
    _print_json(_strict_json(result.to_dict()))
    print(result.table(), file=sys.stderr)  # for people; stdout stays pure JSON
    return 0


def _int_list(flag: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r} must be comma-separated integers, e.g. 512,2048") from None


# ---- run / resume / export / status (the study) ------------------------------------------
def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a study (or continue it) and export its Pareto front")
    p.add_argument("config", nargs="?", help="a study TOML file (or a preset name)")
    p.add_argument("--preset", help="a shipped preset instead of a file, e.g. quick")
    _study_run_flags(p)
    p.set_defaults(handler=_cmd_run)


def _study_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study setting, e.g. --set trials=40 --set budget.tokens=50000 (repeatable)")
    p.add_argument("--ray-address", help="attach to this running Ray cluster (default: start a local Ray)")
    p.add_argument("--no-export", action="store_true", help="do not export the front at the end")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _cmd_run(args: argparse.Namespace) -> int:
    from nas.api import run_study
    from nas.engine.outcome import exit_code

    if bool(args.config) == bool(args.preset):
        raise ValueError("give a study file or --preset NAME (not both), e.g. qkvnas run --preset quick")
    run_study(args.config or args.preset, args.overrides, ray_address=args.ray_address,
              progress=not args.quiet, export=not args.no_export, out=sys.stdout)  # --quiet: still the last line
    return exit_code("qkvnas run")  # 130/143/129 interrupted, 1 every trial failed


def _add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue a study until it reaches its number of trials")
    p.add_argument("name", help="study name (studies/NAME), study directory, or storage URL")
    _study_run_flags(p)
    p.set_defaults(handler=_cmd_resume)


def _cmd_resume(args: argparse.Namespace) -> int:
    from nas.api import resume_study
    from nas.engine.outcome import exit_code

    resume_study(args.name, args.overrides, ray_address=args.ray_address,
                 progress=not args.quiet, export=not args.no_export, out=sys.stdout)
    return exit_code("qkvnas resume")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a study's Pareto front, trials, specs and plot")
    p.add_argument("name", help="study name (studies/NAME), study directory, or storage URL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--study", help="study name inside the storage, when a storage URL holds several")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from nas.api import export_study

    result = export_study(args.name, args.out, study_name=args.study)
    print(f"Pareto front: {result.front_text}, of {result.n_trials} trials: {result.pareto}, {result.trials}, "
          f"{result.plot}, {len(result.specs)} front specs in {result.out_dir / 'specs'}")
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="summarise a study from its storage (safe while it runs)")
    p.add_argument("name", help="study name (studies/NAME), study directory, or storage URL")
    p.add_argument("--study", help="study name inside the storage, when a storage URL holds several")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from nas.api import status_text, study_status

    if args.json:
        _print_json(study_status(args.name, study_name=args.study))
    else:
        print(status_text(args.name, study_name=args.study))
    return 0


def _add_remeasure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("remeasure", help="measure a study's noisy trials again on this machine and update the study")
    p.add_argument("name", help="study name (studies/NAME), study directory, or storage URL")
    p.add_argument("--study", help="study name inside the storage, when a storage URL holds several")
    p.add_argument("--all", action="store_true", help="every measured trial, not only the noisy ones")
    p.set_defaults(handler=_cmd_remeasure)


def _cmd_remeasure(args: argparse.Namespace) -> int:
    from nas.study.remeasure import remeasure_study, summary

    print("\n".join(summary(remeasure_study(args.name, study_name=args.study, every=args.all), args.name)))
    return 0


# ---- probe, probe-suite -----------------------------------------------------------------
def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="train fresh copies of a design on probe tasks; print test accuracies")
    p.add_argument("spec", help="path of a JSON spec (vocab, context and causal are set by each probe)")
    p.add_argument("--tasks", required=True, help="comma-separated probe tasks, e.g. mqar,induction,reverse")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per task (default 1)")
    _flag(p, "--steps", PROBE, type=int, help="training steps per run")
    _flag(p, "--batch-size", PROBE, type=int, help="examples per step")
    _flag(p, "--lr", PROBE, type=float, help="peak learning rate")
    p.add_argument("--param", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="a probe size parameter, e.g. mqar.n_pairs=8 (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the models are tiny; 0 keeps torch's default)")
    p.set_defaults(handler=_cmd_probe)


def _probe_params(items: list[str], tasks: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {task: {} for task in tasks}
    for item in items:
        key, sep, value = item.partition("=")
        task, dot, name = key.partition(".")
        if not (sep and dot and name):
            raise ValueError(f"--param {item!r} must look like TASK.KEY=VALUE, e.g. mqar.n_pairs=8")
        if task not in out:
            raise ValueError(f"--param {item!r} names task {task!r}, which is not in --tasks {tasks}")
        try:
            out[task][name] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--param {item!r}: the value must be a number or true/false") from None
    return out


def _cmd_probe(args: argparse.Namespace) -> int:
    import statistics

    from nas.common import torch_threads
    from nas.probing import ProbeBudget, run_probe
    from search_spaces.spec import ArchSpec

    spec = ArchSpec.load(args.spec)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks {args.tasks!r} must name each probe task once, e.g. --tasks mqar,induction")
    if args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds} must be at least 1")
    params = _probe_params(args.param, tasks)
    budget = ProbeBudget(**_given(args, "steps", "batch_size", "lr"))
    report: dict[str, object] = {"spec": spec.hash, "budget": dataclasses.asdict(budget), "tasks": {}}
    if args.threads < 0:
        raise ValueError(f"--threads={args.threads} must be 0 (torch's default) or more")
    for task in tasks:
        with torch_threads(args.threads or None):
            runs = [run_probe(spec, task, seed=seed, budget=budget, device=args.device, params=params[task])
                    for seed in range(args.seeds)]
        accuracies = [r["accuracy"] for r in runs]
        report["tasks"][task] = {  # type: ignore[index]
            "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "accuracies": accuracies, "params": runs[0]["params"], "wall_s": sum(r["wall_s"] for r in runs),
        }
    _print_json(report)
    return 0


def _add_probe_suite(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe-suite", help="compare designs on probe tasks over a grid; write a variant x task table")
    p.add_argument("--preset", required=True, help="a shipped suite (paper_synthetic, causal_probes) or a suite .toml path")
    p.add_argument("--out", required=True,
                   help="folder for runs.parquet, table.parquet, table.md and the suite's storage (suite.db: "
                        "run the same command again to continue a stopped suite)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="run the suite's trials in this process (default: runs of seconds, Ray's start-up would "
                        "dominate) or as Ray Tune trials")
    p.add_argument("--report", action="store_true",
                   help="run nothing: tabulate the runs finished so far in --out (safe while the suite runs)")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at a time, with --executor ray (default 1); each takes --threads CPU threads")
    p.add_argument("--seeds", type=int, default=None, help="override the suite's number of seeds")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the models are tiny; 0 keeps torch's default)")
    p.set_defaults(handler=_cmd_probe_suite)


def _cmd_probe_suite(args: argparse.Namespace) -> int:
    from nas.engine.outcome import exit_code
    from nas.probing import load_suite, run_suite

    config = load_suite(args.preset)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds={args.seeds} must be at least 1")
        config = config.model_copy(update={"seeds": args.seeds})
    if args.threads < 0:
        raise ValueError(f"--threads={args.threads} must be 0 (torch's default) or more")
    result = run_suite(config, args.out, device=args.device, threads=args.threads or None, executor=args.executor,
                       report_only=args.report, parallel=args.parallel)
    print(result["markdown"])
    return exit_code("qkvnas probe-suite")


# ---- ladder / report (scaling ladders) -----------------------------------------------------
def _add_ladder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ladder", help="train designs over sizes, token budgets and seeds (or continue a ladder)")
    p.add_argument("config", nargs="?", help="a ladder TOML file (or a ladder preset name)")
    p.add_argument("--preset", help="a shipped ladder preset instead of a file, e.g. ladder_small")
    p.add_argument("--from-export", metavar="DIR", help="add the Pareto designs of a study export (qkvnas export --out DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ladder setting, e.g. --set seeds=[0,1,2] (repeatable)")
    p.add_argument("--ray-address", help="attach to this running Ray cluster (default: start a local Ray)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_cmd_ladder)


def _cmd_ladder(args: argparse.Namespace) -> int:
    from nas.engine.outcome import exit_code, interrupted_code
    from nas.ladder import load_ladder_config, run_ladder
    from nas.ladder.report import write_report

    if args.config and args.preset:
        raise ValueError("give a ladder file or --preset NAME, not both")
    config = load_ladder_config(args.config or args.preset, args.overrides, from_export=args.from_export)
    try:
        run = run_ladder(config, ray_address=args.ray_address, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"qkvnas ladder: interrupted; finished points are kept. Continue with the same command, "
              f"or report what is done with: qkvnas report {config.ladder_dir}", file=sys.stderr)
        return interrupted_code()
    print(f"ladder {config.name}: {run.points} points ({run.already_done} done before, {run.ran} run now, "
          f"{run.failed} failed) in {run.wall_s:.0f} s; results: {run.results}")
    if not args.no_report:
        print(f"report: {write_report(config)}")
    return exit_code("qkvnas ladder")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a ladder's Markdown report: fits, gaps to the baseline, plots")
    p.add_argument("name", help="ladder name (studies/NAME) or ladder folder")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for the intervals (default 200)")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from nas.ladder import find_ladder
    from nas.ladder.report import write_report

    print(write_report(find_ladder(args.name), n_boot=args.bootstrap))
    return 0


# ---- registry -------------------------------------------------------------------------
# One line per subcommand; each helper above owns its own arguments.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_costs,
    _add_train,
    _add_measure,
    _add_run,
    _add_resume,
    _add_export,
    _add_status,
    _add_remeasure,
    _add_probe,
    _add_probe_suite,
    _add_ladder,
    _add_report,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qkvnas", description="Architecture search over attention designs, measured on your hardware."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    from nas.bench.cli import add_commands  # tabulate, replay: the search-quality commands
    from nas.weights_cli import add_weights_commands  # load, export-hf: trained weights that leave qkvnas

    add_commands(sub)
    add_weights_commands(sub)
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
        from nas.engine.outcome import interrupted_code

        return interrupted_code()  # 128 + the signal that stopped the run: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
    except BrokenPipeError:  # `qkvnas status NAME | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
