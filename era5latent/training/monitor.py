"""Training logs: a CSV of every logged step and TensorBoard event files (rank 0 only).

Each record is a flat dict of numbers (step, samples/s, learning rate, loss terms, gradient
norms, validation RMSE per channel in physical units); the CSV gains columns as new keys appear
(it is rewritten then, which happens a handful of times per run).
"""

from __future__ import annotations

import csv
import os
from typing import Any


class Monitor:
    def __init__(self, log_dir: str | None, resume: bool) -> None:
        self.log_dir = log_dir
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = []
        self.writer: Any = None
        if log_dir is None:
            return
        os.makedirs(log_dir, exist_ok=True)
        self.csv_path = os.path.join(log_dir, "metrics.csv")
        if resume and os.path.isfile(self.csv_path):
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = [{k: float(v) for k, v in r.items() if v not in ("", None)}
                             for r in reader]
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.log_dir is None:
            return
        row = {"step": float(step), **values}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def truncate(self, step: int) -> None:
        """Forget records after ``step`` (a resume continues from there)."""
        if self.log_dir is None:
            return
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
