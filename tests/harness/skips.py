"""A skipped test fails the run: a tier that cannot run is a failure, not a pass.

pytest's ``-ra`` summary lists every skip with its reason; this plugin then turns the session's
exit status into a failure when any skip is not allowed. Allowed: the GPU tier (``gpu`` marker,
tests/gpu: CI has no GPU, the reason stays visible) and, only when the caller says so with
``FTO_ALLOW_SKIPS=1``, every other skip (a laptop without go, a $KUBECONFIG of another cluster).
``FTO_SKIP_REPORT=FILE`` appends one ``count<TAB>verdict<TAB>reason`` line per reason, which
hack/test.sh prints under its phase summary.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

ALLOW_VAR = "FTO_ALLOW_SKIPS"
REPORT_VAR = "FTO_SKIP_REPORT"


def skips_allowed() -> bool:
    return os.environ.get(ALLOW_VAR, "") not in ("", "0")


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def verdicts(skips: list[tuple[str, bool]], allow: bool) -> Counter[tuple[str, str]]:
    """(verdict, reason) -> count; verdict "FAILS" for skips that fail the run."""
    out: Counter[tuple[str, str]] = Counter()
    for reason, gpu in skips:
        verdict = "allowed (gpu tier)" if gpu else f"allowed by {ALLOW_VAR}" if allow else "FAILS"
        out[(verdict, reason.splitlines()[0] if reason else "")] += 1
    return out


class SkipGate:
    """Collects the session's skips (tests and whole modules) and fails on disallowed ones."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, bool]] = []  # (reason, in the gpu tier)

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((skip_reason(report), "gpu" in getattr(report, "keywords", {})))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def failing(self) -> int:
        counts = verdicts(self.skips, skips_allowed())
        return sum(n for (verdict, _), n in counts.items() if verdict == "FAILS")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.failing() and exitstatus in passing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        target = os.environ.get(REPORT_VAR)
        if target and self.skips:
            counts = verdicts(self.skips, skips_allowed())
            with Path(target).open("a", encoding="utf-8") as out:
                out.writelines(f"{n}\t{v}\t{r}\n" for (v, r), n in counts.items())

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        failing = self.failing()
        if failing:
            terminalreporter.section("skipped tests fail the run", red=True, bold=True)
            terminalreporter.line(
                f"{failing} skip(s) outside the gpu tier (reasons in the short test summary "
                f"below): a tier that cannot run is a failure. Fix the cause, or set "
                f"{ALLOW_VAR}=1 to accept these skips explicitly."
            )
        elif self.skips and skips_allowed():
            terminalreporter.line(f"{len(self.skips)} skip(s) accepted because {ALLOW_VAR} is set")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGate(), "fto-skip-gate")
