"""A sweep without its engine: which trials a sweep has, the config each trains, and the tables
made from their run folders. ``python -m mmfast.tune`` runs the trials on Ray Tune; nothing
here needs Ray, so the plan and the reports are tested (and readable) on their own.

A **point** is one setting of the grid axes (the model YAML's ``hyper_parameters``, or the
axes that ``--set key=<range>`` adds); a **trial** is one point at one seed, trained by
:func:`mmfast.trainer.run` as ``python -m mmfast.train`` would train it, in its own normal run
folder ``trials/p<point>-s<seed>/``. Points are ranked by their **mean valid** metric over seeds
(never test); the tables show mean ± sample standard deviation (n - 1) over the seeds.

Ranges for random or Optuna search, written as ``--set key=<range>``:

==========================  ================================================================
``uniform(a, b)``           a float drawn uniformly from [a, b)
``loguniform(a, b)``        a float whose log is uniform on [log a, log b) (a, b > 0)
``randint(a, b)``           an integer from a to b - 1 (Python's and Tune's convention)
``choice([v1, v2, ...])``   one of the listed values (a list axis does the same)
==========================  ================================================================
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mmfast._atomic import atomic_write_text
from mmfast.configs import ConfigError, parse_yaml
from mmfast.trainer import config as cfg
from mmfast.trainer.experiment import DONE
from mmfast.trainer.fit import METRICS

SEARCHES = ("grid", "random", "optuna")
SPLITS = ("valid", "test")
TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
ERROR_FILE = "error.txt"      # a failed trial: the exception, one line first
STOPPED_FILE = "stopped.json"  # a trial the scheduler stopped early
_RANGE = re.compile(r"^\s*(uniform|loguniform|randint|choice)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Range:
    """One ``--set key=<range>`` axis."""

    kind: str
    args: tuple[Any, ...]

    @classmethod
    def parse(cls, key: str, text: str) -> "Range":
        m = _RANGE.match(text)
        if not m:
            raise ConfigError(f"--set {key}={text}: not a range (uniform, loguniform, randint, "
                              "choice)")
        kind, inner = m.group(1), m.group(2)
        try:
            args = parse_yaml(f"[{inner}]")
        except Exception as exc:  # noqa: BLE001 (YAML's errors are many)
            raise ConfigError(f"--set {key}={text}: arguments are not valid: {exc}") from None
        if kind == "choice":
            if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
                raise ConfigError(f"--set {key}={text}: choice takes one non-empty list")
            return cls(kind, tuple(args[0]))
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                     for a in args):
            raise ConfigError(f"--set {key}={text}: {kind} takes two numbers (low, high)")
        low, high = args
        if not low < high:
            raise ConfigError(f"--set {key}={text}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"--set {key}={text}: loguniform needs low > 0")
        if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"--set {key}={text}: randint takes integers")
        return cls(kind, (low, high))

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return int(rng.integers(low, high))

    def placeholder(self) -> Any:
        """A value of the axis's type, to check the key against the package config."""
        return self.args[0]


def split_overrides(overrides: Iterable[str]) -> tuple[list[str], dict[str, Range]]:
    """``--set`` lines: the plain ones (for :func:`mmfast.trainer.config.resolve`) and the
    ranges, by key. A range line also passes a placeholder value through ``resolve`` so the key
    and its type are checked like any other."""
    plain, ranges = [], {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        if sep and _RANGE.match(raw):
            ranges[key.strip()] = Range.parse(key.strip(), raw)
            plain.append(f"{key.strip()}={json.dumps(ranges[key.strip()].placeholder())}")
        else:
            plain.append(text)
    return plain, ranges


@dataclass
class Plan:
    """Every trial of a sweep: ``points`` (axis -> value) times ``seeds``."""

    axes: list[str]
    points: list[dict[str, Any]]
    seeds: list[int]
    ranges: dict[str, Range] = field(default_factory=dict)

    def trials(self) -> list[str]:
        return [trial_name(i, s) for i in range(len(self.points)) for s in self.seeds]

    def lookup(self, name: str) -> tuple[dict[str, Any], int]:
        m = re.fullmatch(r"p(\d+)-s(-?\d+)", name)
        if not m:
            raise ValueError(f"not a trial name: {name!r}")
        return self.points[int(m.group(1))], int(m.group(2))

    def to_dict(self) -> dict[str, Any]:
        return {"axes": self.axes, "points": self.points, "seeds": self.seeds,
                "ranges": {k: {"kind": r.kind, "args": list(r.args)} for k, r in self.ranges.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        return cls(list(d["axes"]), [dict(p) for p in d["points"]], [int(s) for s in d["seeds"]],
                   {k: Range(r["kind"], tuple(r["args"])) for k, r in d.get("ranges", {}).items()})


def trial_name(point: int, seed: int) -> str:
    return f"p{point:03d}-s{seed}"


def seed_list(config: Mapping[str, Any], seeds: str | None, n_seeds: int | None) -> list[int]:
    """``--seeds 1,2,3``, or ``--n-seeds K`` (the config's seed and the K - 1 after it), or the
    config's seed (one value, or a list when ``seed`` is a grid axis)."""
    if seeds is not None and n_seeds is not None:
        raise ConfigError("give --seeds or --n-seeds, not both")
    if seeds is not None:
        try:
            out = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes integers separated by commas, got {seeds!r}") from None
    else:
        base = config["seed"]
        base = base if isinstance(base, list) else [base]
        out = [int(b) for b in base]
        if n_seeds is not None:
            if n_seeds < 1:
                raise ConfigError(f"--n-seeds must be at least 1, got {n_seeds}")
            out = [out[0] + i for i in range(n_seeds)]
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"seeds must be distinct and at least one, got {out}")
    return out


def make_plan(config: Mapping[str, Any], ranges: Mapping[str, Range], seeds: Sequence[int], *,
              search: str = "grid", samples: int | None = None, sample_seed: int = 0) -> Plan:
    """The points of the sweep. ``grid``: the cartesian product of the list axes named in
    ``hyper_parameters`` (MMRec's order, first axis slowest), ``no_grid`` honoured.
    ``random``: ``samples`` points, each axis drawn independently (a list axis uniformly
    from its values, a range from its distribution), reproducibly from ``sample_seed``.
    ``optuna``: the points are chosen while the sweep runs; the plan holds the axes."""
    if search not in SEARCHES:
        raise ConfigError(f"--search must be one of {SEARCHES}, got {search!r}")
    axes = [k for k in cfg.grid_keys(config) if k != "seed"]
    axes += [k for k in ranges if k not in axes]
    if search == "grid":
        if ranges:
            raise ConfigError(f"ranges ({', '.join(ranges)}) need --search random or optuna; "
                              "--search grid takes lists")
        if samples is not None:
            raise ConfigError("--samples is for --search random or optuna")
        one = dict(config, seed=seeds[0])
        points = [{k: p[k] for k in axes} for p in cfg.grid_points(one)]
        return Plan(axes, points, list(seeds))
    if samples is None or samples < 1:
        raise ConfigError(f"--search {search} needs --samples N (N >= 1)")
    if search == "optuna":
        if len(seeds) > 1:
            raise ConfigError("--search optuna runs each suggested point at one seed; repeat the "
                              "best point over seeds with a grid sweep (--set its values, "
                              "--n-seeds K)")
        return Plan(axes, [], list(seeds), dict(ranges))
    rng = np.random.default_rng(sample_seed)
    points = []
    for _ in range(samples):
        point = {}
        for k in axes:
            if k in ranges:
                point[k] = ranges[k].sample(rng)
            elif isinstance(config[k], list):
                point[k] = config[k][int(rng.integers(len(config[k])))]
            else:
                point[k] = config[k]
        points.append(point)
    return Plan(axes, points, list(seeds), dict(ranges))


def trial_config(config: Mapping[str, Any], point: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The config one trial trains: ``config`` with the point's axis values and the seed fixed,
    no grid left (``python -m mmfast.train --set`` of each value would train the same)."""
    out = dict(config)
    out.update(point)
    out.update(seed=int(seed), hyper_parameters=[], no_grid=False, default_point={})
    cfg.validate(out)
    return out


# ----------------------------------------------------------------------------- reports
def trial_row(folder: Path, name: str, point_index: int, point: Mapping[str, Any],
              seed: int) -> dict[str, Any]:
    """One row of ``results.csv`` from a trial's run folder (absent: ``pending``)."""
    row: dict[str, Any] = {"trial": name, "point": point_index, "seed": seed, **point}
    metrics = folder / METRICS
    data = json.loads(metrics.read_text()) if metrics.is_file() else None
    status = data["status"] if data else "pending"
    error = ""
    if (folder / ERROR_FILE).is_file():
        status, error = "failed", (folder / ERROR_FILE).read_text().strip().splitlines()[0]
    elif (folder / STOPPED_FILE).is_file() and status not in DONE:
        status = "stopped"
        error = json.loads((folder / STOPPED_FILE).read_text()).get("reason", "")
    row.update(status=status, error=error)
    best = (data or {}).get("best") or {}
    epochs = (data or {}).get("epochs") or []
    row["best_epoch"] = best.get("epoch")
    row["epochs"] = len(epochs)
    row["seconds"] = round(sum(e.get("train_time", 0) + e.get("eval_time", 0) for e in epochs), 3)
    for split in SPLITS:
        for key, value in (best.get(split) or {}).items():
            row[f"{split}_{key}"] = value
    row["run_dir"] = str(folder)
    return row


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def point_table(rows: list[dict[str, Any]], axes: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """Per point: its axis values, how many seeds finished, and mean/std of the valid and test
    metrics and of the epochs, over the trials that produced an evaluation; best mean valid
    ``metric`` first (points with none last)."""
    out = []
    for point, group in itertools.groupby(sorted(rows, key=lambda r: r["point"]),
                                          key=lambda r: r["point"]):
        group = list(group)
        done = [r for r in group if r.get(f"valid_{metric}") not in (None, "")]
        entry: dict[str, Any] = {"point": point, **{a: group[0].get(a) for a in axes},
                                 "trials": len(group), "evaluated": len(done),
                                 "failed": sum(r["status"] == "failed" for r in group)}
        for split in SPLITS:
            for key in dict.fromkeys((metric, *TABLE_METRICS)):
                values = [float(r[f"{split}_{key}"]) for r in done if f"{split}_{key}" in r]
                if values:
                    entry[f"{split}_{key}"] = mean_std(values)
        if done:
            entry["epochs"] = mean_std([float(r["epochs"]) for r in done])
        out.append(entry)
    out.sort(key=lambda e: -e[f"valid_{metric}"][0] if f"valid_{metric}" in e else math.inf)
    return out


def _fmt(value: Any) -> str:
    """An axis value for a table: floats in 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pm(value: tuple[float, float] | None) -> str:
    return "–" if value is None else f"{value[0]:.4f} ± {value[1]:.4f}"


def summary_markdown(table: list[dict[str, Any]], axes: Sequence[str], metric: str,
                     title: str) -> str:
    cols = [f"valid {metric}"] + [f"test {k}" for k in TABLE_METRICS]
    head = ["rank", *axes, "seeds", *cols, "epochs"]
    lines = [f"# {title}", "",
             f"Points ranked by mean valid {metric} over seeds (mean ± sample std; test never "
             "selects).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, e in enumerate(table, 1):
        seeds = f"{e['evaluated']}/{e['trials']}" + (f" ({e['failed']} failed)" if e["failed"] else "")
        cells = [str(rank), *(_fmt(e.get(a)) for a in axes), seeds,
                 _pm(e.get(f"valid_{metric}")), *(_pm(e.get(f"test_{k}")) for k in TABLE_METRICS),
                 "–" if "epochs" not in e else f"{e['epochs'][0]:.1f} ± {e['epochs'][1]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_table(table: list[dict[str, Any]], axes: Sequence[str], metric: str) -> str:
    """The same table for a terminal (fixed-width columns)."""
    head = ["#", *axes, "seeds", f"valid {metric}", "test recall@20", "test ndcg@20", "epochs"]
    rows = [[str(i), *(_fmt(e.get(a)) for a in axes), f"{e['evaluated']}/{e['trials']}",
             _pm(e.get(f"valid_{metric}")), _pm(e.get("test_recall@20")),
             _pm(e.get("test_ndcg@20")),
             "–" if "epochs" not in e else f"{e['epochs'][0]:.1f}"]
            for i, e in enumerate(table, 1)]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [head, *rows])


def plot_sweep(path: Path, rows: list[dict[str, Any]], axes: Sequence[str], metric: str) -> bool:
    """``sweep.png``: the valid and test metric of every trial against each axis (a log axis
    for positive values spanning more than a decade), the per-value mean as a line. False when
    matplotlib is missing or there is nothing to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    done = [r for r in rows if r.get(f"valid_{metric}") not in (None, "")]
    shown = [a for a in axes if len({json.dumps(r.get(a), sort_keys=True) for r in rows}) > 1]
    if not done:
        return False
    shown = shown or ["point"]
    fig, grid = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    for ax, axis in zip(grid[0], shown):
        numeric = all(isinstance(r.get(axis), (int, float)) and not isinstance(r.get(axis), bool)
                      for r in done)
        labels = sorted({str(r.get(axis)) for r in done}) if not numeric else None
        def xval(r, labels=labels):
            return float(r[axis]) if labels is None else labels.index(str(r.get(axis)))
        for split, marker in (("valid", "o"), ("test", "x")):
            xs = [xval(r) for r in done]
            ys = [float(r[f"{split}_{metric}"]) for r in done]
            ax.scatter(xs, ys, marker=marker, alpha=0.6, label=f"{split} {metric}")
            means = {}
            for x, y in zip(xs, ys):
                means.setdefault(x, []).append(y)
            mx = sorted(means)
            ax.plot(mx, [statistics.fmean(means[x]) for x in mx], alpha=0.8)
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        elif min(float(r[axis]) for r in done) > 0 and (
                max(float(r[axis]) for r in done) / min(float(r[axis]) for r in done) > 10):
            ax.set_xscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    grid[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True
