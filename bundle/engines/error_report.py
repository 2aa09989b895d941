"""Short error output for `python -m monai.bundle run` started by the bundle's scripts (scripts/run_demo.py).

An error raised inside a config expression reaches the user wrapped by MONAI (RuntimeError "Failed to evaluate
ConfigExpression ...", several times, 50-700 lines). `TracebackFilter` passes every ordinary log line through, folds
each traceback into its final exception line, and `bundle_error` picks the bundle's own message (ManifestError,
RadiographReadError, PreflightError, ...) so that the caller can print it last. The full text is kept for a log file;
`--debug` in the scripts turns the filter off.
"""

from __future__ import annotations

import re

BUNDLE_ERROR = re.compile(r"^(bundle\.[\w.]+(?:Error|Exception)): (.*)$")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*$")
CHAIN_LINES = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


class TracebackFilter:
    """Feed lines one by one; `feed` returns the lines to show (tracebacks folded), `lines` keeps everything."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._in_traceback = False

    def feed(self, line: str) -> list[str]:
        text = line.rstrip("\n")
        self.lines.append(text)
        if text.startswith("Traceback (most recent call last):"):
            self._in_traceback = True
            return []
        if self._in_traceback:
            if text.startswith((" ", "\t")) or text.strip() in ("", "^", "~"):
                return []  # a frame, source line or marker
            self._in_traceback = False
            return [f"  {text}"] if EXCEPTION_LINE.match(text) else [text]
        if text.strip() in CHAIN_LINES:
            return []
        return [text]


def bundle_error(lines: list[str]) -> str | None:
    """The bundle's own error message among the output lines (the last one, which is the root cause MONAI wrapped)."""
    found = None
    for line in lines:
        match = BUNDLE_ERROR.match(line.strip())
        if match:
            found = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    return found
