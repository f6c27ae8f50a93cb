"""``kubectl_complete-finetune``: shell completion through kubectl's plugin protocol.

kubectl (1.26+) runs ``kubectl_complete-finetune __complete <words after "finetune">``, the last
word being the one under the cursor (possibly empty), and expects cobra's answer: one candidate
per line, then ``:<directive>``. Verbs and flags come from ``main.VERBS``; job and namespace
names from the cluster (silently none when it cannot be reached).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from finetune_operator.cli.main import ALIASES, COMMON_FLAGS, FLAGS_WITH_VALUE, VERBS

# cobra's ShellCompDirective values
DEFAULT = 0
NO_SPACE = 2
NO_FILE_COMP = 4

Lister = Callable[[str, dict[str, str]], list[str]]


def _from_cluster(what: str, flags: dict[str, str]) -> list[str]:
    from finetune_operator.cli.api import Api, CliError, Target

    try:
        api = Api(
            Target(
                kubeconfig=flags.get("--kubeconfig"),
                context=flags.get("--context"),
                namespace=flags.get("--namespace"),
                request_timeout=5.0,
            )
        )
        if what == "namespaces":
            return api.list_namespaces()
        items = api.list_jobs(api.namespace).get("items") or []
        return [str(j["metadata"]["name"]) for j in items]
    except (CliError, Exception):  # completion must never print a traceback
        return []


_LONG = {"-n": "--namespace", "-o": "--output", "-w": "--watch", "-f": "--follow"}


def complete(words: Sequence[str], lister: Lister = _from_cluster) -> tuple[list[str], int]:
    """(candidates, directive) for ``words``; the last word is the one being completed."""
    *done, current = list(words) or [""]
    flags: dict[str, str] = {}
    positionals: list[str] = []
    i = 0
    while i < len(done):
        word = done[i]
        if word.startswith("-"):
            key, _, inline = word.partition("=")
            key = _LONG.get(key, key)
            if word in FLAGS_WITH_VALUE and not inline:
                flags[key] = done[i + 1] if i + 1 < len(done) else ""
                i += 2
                continue
            flags[key] = inline
        else:
            positionals.append(word)
        i += 1
    previous = done[-1] if done else ""
    verb = ALIASES.get(positionals[0], positionals[0]) if positionals else None

    if previous in ("-n", "--namespace") and previous in FLAGS_WITH_VALUE:
        return _match(lister("namespaces", flags), current), NO_FILE_COMP
    if previous in ("-o", "--output"):
        if verb == "report":
            return [], DEFAULT  # a file name: the shell's own completion
        return _match(["yaml", "json", "wide"], current), NO_FILE_COMP
    if previous in FLAGS_WITH_VALUE:
        return [], NO_FILE_COMP
    if current.startswith("-"):
        own = VERBS[verb][2] if verb in VERBS else ()
        return _match([*own, *COMMON_FLAGS], current), NO_FILE_COMP
    if verb is None:
        return _match(list(VERBS), current), NO_FILE_COMP
    if verb in VERBS and VERBS[verb][1] and len(positionals) == 1:
        return _match(sorted(lister("jobs", flags)), current), NO_FILE_COMP
    return [], NO_FILE_COMP


def _match(candidates: Sequence[str], prefix: str) -> list[str]:
    return [c for c in candidates if c.startswith(prefix)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kubectl_complete-finetune``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("__complete", "__completeNoDesc"):
        args = args[1:]
    candidates, directive = complete(args)
    for candidate in candidates:
        print(candidate)
    print(f":{directive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
