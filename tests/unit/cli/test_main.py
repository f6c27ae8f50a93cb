"""Argument handling of ``kubectl finetune``: verbs as the API names them, typo suggestions, and
kubeconfig loading through the client's own loader (multi-file $KUBECONFIG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator.cli import main as cli
from finetune_operator.cli.api import Api, Target


@pytest.mark.parametrize(
    ("word", "hint"),
    [
        ("suspnd", 'did you mean "suspend"'),
        ("paus", 'did you mean "suspend"'),  # the alias suggests the verb it stands for
        ("stauts", 'did you mean "status"'),
        ("xyzzy", "verbs: list, get, status"),
    ],
)
def test_unknown_verb_exits_64_with_a_suggestion(
    word: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([word, "bot"])
    assert exc.value.code == 64
    err = capsys.readouterr().err
    assert f'unknown verb "{word}"' in err and hint in err


def test_pause_is_an_alias_of_suspend(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(cli, "Api", lambda target: object())
    from finetune_operator.cli import control

    def fake(api: Any, name: str, suspend: bool, out: Any) -> int:
        calls.append((name, suspend))
        return 0

    monkeypatch.setattr(control, "set_suspend", fake)
    for verb in ("suspend", "pause", "resume"):
        assert cli.run(cli.build_parser().parse_args([verb, "bot"])) == 0
    assert calls == [("bot", True), ("bot", True), ("bot", False)]


def _kubeconfig(path: Path, context: str, namespace: str, current: bool) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": context, "user": {"token": "t"}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": namespace},
            }
        ],
    }
    if current:
        doc["current-context"] = context
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_multi_file_kubeconfig_is_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _kubeconfig(tmp_path / "a", "ctx-a", "ns-a", current=True)
    b = _kubeconfig(tmp_path / "b", "ctx-b", "ns-b", current=False)
    monkeypatch.setenv("KUBECONFIG", f"{a}:{b}")
    assert Api(Target()).namespace == "ns-a"  # current-context from the first file
    assert Api(Target(context="ctx-b")).namespace == "ns-b"  # a context of the second file
    assert Api(Target(context="ctx-b", namespace="x")).namespace == "x"


def test_the_first_file_to_set_current_context_wins_and_empty_files_are_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As kubectl merges $KUBECONFIG (the client's own merge lets the last current-context win
    and refuses an empty file)."""
    empty = tmp_path / "empty"
    empty.write_text("")
    a = _kubeconfig(tmp_path / "a", "ctx-a", "ns-a", current=True)
    b = _kubeconfig(tmp_path / "b", "ctx-b", "ns-b", current=True)
    monkeypatch.setenv("KUBECONFIG", f"{empty}:{tmp_path / 'missing'}:{a}:{b}")
    assert Api(Target()).namespace == "ns-a"
    assert Api(Target(context="ctx-b")).namespace == "ns-b"
    monkeypatch.setenv("KUBECONFIG", f"{b}:{a}")
    assert Api(Target()).namespace == "ns-b"
