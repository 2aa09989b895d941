"""Once-per-epoch collapse warning for pretraining (thresholds in bundle/losses/diagnostics.py, documented in
docs/method_notes.md).

The model logs its diagnostics at every step; this handler averages them over the training epoch (and reads the
validation means when an evaluator is given) and logs ONE warning per epoch naming what collapsed, instead of a line
per step. The findings of the last epoch stay in `engine.state.collapse_findings` for scripts and tests.
"""

from __future__ import annotations

import logging
import math

from monai.utils import min_version, optional_import

from bundle.losses.diagnostics import COLLAPSE_STD_RATIO, COLLAPSE_WITHIN_COSINE, DIAGNOSTIC_KEYS, collapse_findings

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

logger = logging.getLogger(__name__)


class CollapseMonitor:
    """Args: evaluator (optional, its `val_diag_*` metrics are checked after each validation), std_threshold,
    within_threshold (see bundle/losses/diagnostics.collapse_findings)."""

    def __init__(
        self,
        evaluator=None,
        std_threshold: float = COLLAPSE_STD_RATIO,
        within_threshold: float = COLLAPSE_WITHIN_COSINE,
    ) -> None:
        self.evaluator = evaluator
        self.std_threshold, self.within_threshold = std_threshold, within_threshold
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def attach(self, engine) -> None:
        engine.state.collapse_findings = []
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report_training)
        if self.evaluator is not None:
            trainer = engine
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda ev: self._report_validation(trainer, ev))

    def _reset(self, engine) -> None:
        self._sums, self._counts = {}, {}

    def _accumulate(self, engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or output.get("skipped"):
            return
        for key in DIAGNOSTIC_KEYS:
            value = output.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
                self._counts[key] = self._counts.get(key, 0) + 1

    def epoch_means(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums}

    def _warn(self, where: str, epoch: int, findings: list[str]) -> None:
        if findings:
            logger.warning("collapse detected in %s of epoch %d: %s", where, epoch, "; ".join(findings))

    def _report_training(self, engine) -> None:
        findings = collapse_findings(self.epoch_means(), self.std_threshold, self.within_threshold)
        engine.state.collapse_findings = findings
        self._warn("training", engine.state.epoch, findings)

    def _report_validation(self, trainer, evaluator) -> None:
        metrics = {
            k[len("val_") :]: v
            for k, v in evaluator.state.metrics.items()
            if k.startswith("val_diag_") and isinstance(v, (int, float)) and math.isfinite(v)
        }
        findings = collapse_findings(metrics, self.std_threshold, self.within_threshold)
        evaluator.state.collapse_findings = findings
        self._warn("validation", trainer.state.epoch, findings)
