"""Run outputs in MMRec's shapes: the log file, metric lines, metrics.json and curves.png."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmfast._atomic import atomic_write_json

LOG_FORMAT = "%(asctime)-15s %(levelname)s %(message)s"
DATE_FORMAT = "%a %d %b %Y %H:%M:%S"


class _TqdmSafeHandler(logging.StreamHandler):
    """Console lines that do not tear an active progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logger(log_file: Path, console: bool = True) -> logging.Logger:
    """The run's logger: every line to ``log_file`` (appended on resume) and to stdout."""
    logger = logging.getLogger(f"mmfast.run.{log_file.parent.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    fh.setFormatter(fmt)
    logger.addHandler(fh)
    if console:
        ch = _TqdmSafeHandler(sys.stdout)
        ch.setFormatter(fmt)
        logger.addHandler(ch)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def dict2str(metrics: Mapping[str, float]) -> str:
    """MMRec's result line: ``recall@5: 0.0123    recall@10: ...``."""
    return "    ".join(f"{k}: {v:.4f}" for k, v in metrics.items())


def metrics_table(valid: Mapping[str, float], test: Mapping[str, float], epoch: Any) -> str:
    """The selected result as a small table: one metric a row, valid and test columns."""
    names = list(dict.fromkeys([*valid, *test]))
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  {'valid':>7}  {'test':>7}   (best valid epoch {epoch})"]
    for n in names:
        v, t = valid.get(n), test.get(n)
        lines.append(f"{n:<{width}}  {'' if v is None else f'{v:.4f}':>7}  "
                     f"{'' if t is None else f'{t:.4f}':>7}")
    return "\n".join(lines)


def config_block(config: Mapping[str, Any]) -> str:
    lines = ["", "Configuration (merged: overall < dataset < model < --config < command line):"]
    lines += [f"{k}={v}" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, result: Mapping[str, Any]) -> None:
    atomic_write_json(path, result)


def plot_curves(path: Path, epochs: Sequence[Mapping[str, Any]], metric: str,
                logger: logging.Logger | None = None) -> bool:
    """Training loss and valid ``metric`` per epoch; False (with a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if logger:
            logger.info("curves.png skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    trained = [e for e in epochs if e.get("train_loss") is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([e["epoch"] for e in trained], [e["train_loss"] for e in trained], marker=".")
    a.set_xlabel("epoch")
    a.set_ylabel("train loss (sum over batches)")
    ev = [e for e in epochs if e.get("valid")]
    b.plot([e["epoch"] for e in ev], [e["valid"][metric] for e in ev], marker=".", label="valid")
    b.plot([e["epoch"] for e in ev], [e["test"][metric] for e in ev], marker=".", alpha=0.6,
           label="test")
    b.set_xlabel("epoch")
    b.set_ylabel(metric)
    b.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True
