"""predictions.csv of a classification evaluation: a header, one row per item keyed by its manifest id.

    id,image,<class 1>,<class 2>,...
    test_003,/data/images/test_003.png,0.8125,0.0331,...

Probabilities after the task's activation (sigmoid / softmax), in the checkpoint's class order (which the loader has
checked against the manifest). Rows are sorted by id; with several processes every rank's rows are gathered and rank
0 writes the file (atomically). MONAI's ClassificationSaver writes neither a header nor the id.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import torch

from bundle.engines import distributed as dist_utils


class PredictionsCSVWriter:
    """Ignite handler for a SupervisedEvaluator (decollated batches with "id", "image" and the output "pred")."""

    def __init__(
        self, output_dir: str, class_names: Sequence[str], filename: str = "predictions.csv", precision: int = 6
    ) -> None:
        self.output_dir = output_dir
        self.class_names = [str(n) for n in class_names]
        self.filename = filename
        self.precision = int(precision)
        self._rows: list[list] = []

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, self.filename)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine=None) -> None:
        self._rows = []

    def collect(self, engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            pred = torch.as_tensor(output["pred"]).detach().float().reshape(-1).cpu().tolist()
            if len(pred) != len(self.class_names):
                raise ValueError(f"item {item.get('id')}: {len(pred)} outputs for {len(self.class_names)} classes")
            image = item.get("image")
            path = image.meta.get("filename_or_obj", "") if hasattr(image, "meta") else ""
            self._rows.append([str(item.get("id", "")), str(path)] + [round(p, self.precision) for p in pred])

    def write(self, engine=None) -> str | None:
        rows = [row for part in dist_utils.all_gather_object(self._rows) for row in part]
        if not dist_utils.is_main_process():
            return None
        rows.sort(key=lambda r: r[0])
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["id", "image"] + self.class_names)
        writer.writerows(rows)
        os.makedirs(self.output_dir, exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text.getvalue())
        os.replace(tmp, self.path)
        return self.path
