"""``acp balance report``, and the ``--balance`` options that ``acp plan`` and ``acp generate``
share (declared in ``acp.cli.plan``; turned into a top-up plan here)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from acp import defaults
from acp.cli._common import fail, handle_errors, notice
from acp.cli.app import app

if TYPE_CHECKING:
    from acp.balance import BalancePlan, BalanceReport, ClassHistogram

balance_app = typer.Typer(
    name="balance",
    help="Long-tail top-up: class histograms of a real set, before and after a synthetic one.",
    no_args_is_help=True,
)
app.add_typer(balance_app, name="balance")



@dataclass(frozen=True)
class BalanceArgs:
    """The ``--balance`` options as given on the command line."""

    real: Path | None
    target: int | None
    pass_rate: float = 1.0
    pass_rate_from: Path | None = None
    tail_below: int | None = None
    frequency: str | None = None
    categories_only: str | None = None
    max_per_category: int | None = None
    companion_cap: float = defaults.BALANCE_COMPANION_CAP

    def given_without_real(self) -> list[str]:
        defaults_ = BalanceArgs(None, None)
        return [f"--{name.replace('_', '-')}" for name in ("target", "pass_rate", "pass_rate_from",
                "tail_below", "frequency", "categories_only", "max_per_category", "companion_cap")
                if getattr(self, name) != getattr(defaults_, name)]


def balance_plan(args: BalanceArgs, *, input: Path | None, concepts: str | None, scenes: int | None,
                 objects: tuple[int, int], seed: int) -> BalancePlan | None:
    """The top-up plan the options ask for, or None without ``--balance``. Prints how long the
    read and the plan took and where the budget goes; an empty plan is a notice, not an error."""
    if args.real is None:
        extra = args.given_without_real()
        if extra:
            raise fail(f"{', '.join(extra)} need --balance REAL", code=2)
        return None
    if input is not None or concepts is not None:
        raise fail("--balance plans its own scenes: give REAL without INPUT or --concepts", code=2)
    if scenes is not None:
        raise fail("--scenes cannot be combined with --balance (the quotas decide the scenes)", code=2)
    if args.target is None:
        raise fail("--balance needs --target N (the instances each selected category reaches)", code=2)
    from acp.balance import BalanceOptions, describe_budget, parse_frequency, pass_rates_from, plan_balance
    from acp.balance import read_histogram as read

    options = BalanceOptions(
        target=args.target, pass_rate=args.pass_rate, tail_below=args.tail_below,
        frequency=parse_frequency(args.frequency),
        categories_only=tuple(n.strip() for n in (args.categories_only or "").split(",") if n.strip()),
        max_per_category=args.max_per_category, objects=objects, companion_cap=args.companion_cap,
        seed=seed,
    )
    start = time.perf_counter()
    histogram = read(args.real)
    read_seconds = time.perf_counter() - start
    rates = pass_rates_from(args.pass_rate_from, histogram) if args.pass_rate_from else None
    plan = plan_balance(histogram, options, rates)
    notice(f"{args.real}: {len(histogram.categories)} categories, {int(histogram.instances.sum())} "
           f"instances in {histogram.images} images (read in {read_seconds:.1f} s, planned in "
           f"{time.perf_counter() - start - read_seconds:.1f} s)")
    notice_skipped(histogram)
    if histogram.ambiguous:
        notice(f"{len(histogram.ambiguous)} categories left out: their names match other categories "
               f"too ({', '.join(repr(n) for n in histogram.ambiguous[:5])}"
               f"{', ...' if len(histogram.ambiguous) > 5 else ''})")
    if not plan.scenes:
        notice(f"nothing to do: every selected category ({int(plan.selected.sum())}) already has at "
               f"least {options.target} instances in {args.real}")
    else:
        notice(describe_budget(plan))
    return plan


def notice_skipped(histogram: ClassHistogram) -> None:
    """What of REAL was not counted, and why (one line each), so nothing is left out unsaid."""
    from acp.balance import MAX_PAIRS, MAX_PARTNERS

    if histogram.skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in histogram.skipped.most_common())
        notice(f"{histogram.path}: {sum(histogram.skipped.values())} annotations not counted ({reasons})")
    if histogram.pairs_cut:
        notice(f"{histogram.path}: {histogram.pairs_cut} co-occurrences shared by fewest images left out "
               f"(at most {MAX_PAIRS} pairs are kept, {MAX_PARTNERS} partners a category)")


def write_report(report: BalanceReport, folder: Path, *, limit: int = 40) -> None:
    """The table on stdout, ``balance.json`` and ``balance.png`` in ``folder``."""
    from acp.errors import MissingDependencyError
    from acp.runfolder import BALANCE_CHART as CHART_FILE
    from acp.runfolder import BALANCE_REPORT as REPORT_FILE

    for line in report.table(limit):
        print(line)
    folder.mkdir(parents=True, exist_ok=True)
    report.write_json(folder / REPORT_FILE)
    written = [folder / REPORT_FILE]
    try:
        report.write_chart(folder / CHART_FILE)
        written.append(folder / CHART_FILE)
    except MissingDependencyError as missing:  # the table and the JSON are there all the same
        notice(f"no {CHART_FILE}: {missing}")
    totals = report.totals()
    below = ""
    if "target" in totals:
        below = (f"; below {totals['target']}: {totals['below_target_before']} categories before, "
                 f"{totals['below_target_after']} after")
    print(f"{', '.join(map(str, written))}: {totals['categories']} categories, "
          f"{totals['real_instances']} real + {totals['synthetic_instances']} synthetic instances{below}")
    if report.unmatched:
        notice(f"{report.unmatched} synthetic instances match no category of {report.histogram.path}")


def report_after_run(plan: BalancePlan, annotations: Path, folder: Path) -> None:
    """The report at the end of ``generate --balance``: REAL plus what the run exported."""
    from acp.balance import BalanceReport, synthetic_counts

    counts, unmatched = synthetic_counts(annotations, plan.histogram)
    write_report(BalanceReport(plan.histogram, counts, plan.options.target, plan.selected, unmatched),
                 folder, limit=20)


@balance_app.command("report")
@handle_errors
def report(
    real: Annotated[Path, typer.Argument(metavar="REAL", help="Real COCO/LVIS instances file.")],
    synthetic: Annotated[
        Path | None,
        typer.Argument(metavar="[SYNTHETIC]", show_default=False,
                       help="What is added: a COCO file (OUT/annotations.json) or a plans .jsonl "
                       "(every planned object)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", show_default=False,
                     help="Folder for balance.json and balance.png [default: SYNTHETIC's folder, else .]."),
    ] = None,
    target: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="Draw this target and count who is below it."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows of the terminal table (the JSON has all).")] = 40,
) -> None:
    """Instances per category of REAL before and after SYNTHETIC: a table, balance.json (every
    row, head to tail) and balance.png (a log-scale bar chart with the target line)."""
    import numpy as np

    from acp.balance import BalanceReport, read_histogram, synthetic_counts

    histogram = read_histogram(real)
    notice_skipped(histogram)
    counts, unmatched = (synthetic_counts(synthetic, histogram) if synthetic is not None
                         else (np.zeros(len(histogram.categories), dtype=np.int64), 0))
    folder = output or (synthetic.parent if synthetic is not None else Path("."))
    write_report(BalanceReport(histogram, counts, target, None, unmatched), folder, limit=limit)
