"""kubectl's plugin completion protocol: candidates one per line, then ``:<directive>``."""

from __future__ import annotations

import pytest

from finetune_operator.cli import complete as c
from finetune_operator.cli.main import VERBS


def lister(what: str, flags: dict[str, str]) -> list[str]:
    if what == "namespaces":
        return ["default", "ml"]
    return ["bot-b", "bot-a", "other"] if flags.get("--namespace") != "empty" else []


@pytest.mark.parametrize(
    ("words", "candidates", "directive"),
    [
        ([""], list(VERBS), 4),
        (["st"], ["status"], 4),
        (["re"], ["resume", "restart", "retry", "report"], 4),
        (["watch", ""], ["bot-a", "bot-b", "other"], 4),
        (["logs", "bo"], ["bot-a", "bot-b"], 4),
        (["-n", "empty", "watch", ""], [], 4),
        (["watch", "-n", "empty", ""], [], 4),
        (["watch", "bot-a", ""], [], 4),
        (["list", ""], [], 4),
        (["get", "bot-a", "-o", ""], ["yaml", "json", "wide"], 4),
        (["report", "bot-a", "-o", ""], [], 0),
        (["-n", "m"], ["ml"], 4),
        (["status", "--t"], ["--timeout"], 4),
        (["pause", ""], ["bot-a", "bot-b", "other"], 4),  # the alias takes a job name too
        (
            ["list", "--"],
            ["--watch", "--namespace", "--all-namespaces", "--context", "--kubeconfig"],
            4,
        ),
    ],
)
def test_complete(words: list[str], candidates: list[str], directive: int) -> None:
    assert c.complete(words, lister) == (candidates, directive)


def test_main_prints_the_cobra_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert c.main(["__complete", "su"]) == 0
    assert capsys.readouterr().out == "suspend\n:4\n"
