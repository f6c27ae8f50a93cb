"""``kubectl finetune`` (console script ``kubectl-finetune``): argument parsing and dispatch."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from finetune_operator.cli import render as r
from finetune_operator.cli.api import Api, CliError, Target

# verb -> (help, takes NAME, its own flags) — the completion reads this table too
VERBS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "list": ("List FineTuneJobs with phase, progress, loss and ETA.", False, ("-w", "--watch")),
    "get": ("Show one FineTuneJob (-o yaml|json).", True, ("-o", "--output")),
    "status": (
        "Print the job's phase and progress; the exit code says how it ended.",
        True,
        ("-w", "--watch", "--timeout", "--interval"),
    ),
    "watch": ("Live view until the job succeeds or fails.", True, ("--interval",)),
    "logs": (
        "Logs of the current trainer pod (--all: every attempt's).",
        True,
        ("-f", "--follow", "--tail", "--all"),
    ),
    "suspend": ("Suspend the job (spec.suspend=true): checkpoint, free the GPUs.", True, ()),
    "resume": ("Resume the job from its newest checkpoint (spec.suspend=false).", True, ()),
    "restart": ("Start the job over from step 0 (the restart annotation).", True, ()),
    "retry": (
        "Try a Failed job again from its newest checkpoint (the retry annotation).",
        True,
        (),
    ),
    "events": ("Events of the job and its pods.", True, ()),
    "report": ("Write a tarball for bug reports (no Secrets).", True, ("-o", "--output")),
}
# alias -> verb: the API, the phase and the Argo CD action say "suspend"; "pause" still works
ALIASES: dict[str, str] = {"pause": "suspend"}
COMMON_FLAGS = ("-n", "--namespace", "-A", "--all-namespaces", "--context", "--kubeconfig")
FLAGS_WITH_VALUE = frozenset(
    {"-n", "--namespace", "--context", "--kubeconfig", "-o", "--output", "--timeout", "--tail"}
    | {"--interval", "--request-timeout"}
)

EPILOG = """\
status exit codes: 0 Succeeded, 1 Failed, 2 timed out (--timeout), 3 Suspended, 4 still in
progress (without --watch), 5 the job could not be read. Other verbs: 0 done, 1 error.
Usage errors: 64. See docs/kubectl-plugin.md."""


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 64 for usage errors (2 means "timed out" for ``status``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(r.EXIT_USAGE, f"{self.prog}: error: {suggest(message)}\n")


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)'")


def suggest(message: str) -> str:
    """argparse's "invalid choice" for a verb, with the closest verbs (difflib) named."""
    found = _INVALID_CHOICE.search(message)
    if found is None or not message.startswith("argument VERB"):
        return message
    word = found["word"]
    close = difflib.get_close_matches(word, [*VERBS, *ALIASES], n=3, cutoff=0.6)
    if not close:
        return f'unknown verb "{word}"; verbs: {", ".join(VERBS)}'
    named = " or ".join(f'"{ALIASES.get(c, c)}"' for c in dict.fromkeys(close))
    return f'unknown verb "{word}"; did you mean {named}?'


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """kubectl's flags, accepted before and after the verb."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("-n", "--namespace", default=default, help="Namespace of the job.")
    parser.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="All namespaces (list).",
    )
    parser.add_argument("--context", default=default, help="kubeconfig context to use.")
    parser.add_argument("--kubeconfig", default=default, help="Path to the kubeconfig file.")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=argparse.SUPPRESS if suppress else 30.0,
        help="Seconds to wait for one API request (default 30).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kubectl finetune",
        description="Inspect and control FineTuneJobs (finetune.dev/v1alpha1).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for verb, (text, takes_name, _flags) in VERBS.items():
        aliases = [a for a, v in ALIASES.items() if v == verb]
        p = sub.add_parser(verb, aliases=aliases, help=text, description=text)
        _common(p, suppress=True)
        if takes_name:
            p.add_argument("name", metavar="NAME", help="FineTuneJob name.")
        if verb == "list":
            p.add_argument("-w", "--watch", action="store_true", help="Print changes as they come.")
        elif verb == "get":
            p.add_argument(
                "-o",
                "--output",
                choices=("yaml", "json", "wide"),
                default="wide",
                help="Output format (default: a table row).",
            )
        elif verb == "status":
            p.add_argument(
                "-w", "--watch", action="store_true", help="Wait until Succeeded/Failed/Suspended."
            )
            p.add_argument("--timeout", type=float, help="Give up after S seconds (exit code 2).")
            p.add_argument("--interval", type=float, default=2.0, help="Poll period (seconds).")
        elif verb == "watch":
            p.add_argument("--interval", type=float, default=2.0, help="Poll period (seconds).")
        elif verb == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="Stream the log.")
            p.add_argument("--tail", type=int, help="Lines from the end (default: all).")
            p.add_argument(
                "--all",
                dest="every",
                action="store_true",
                help="Every pod of the job in order; a gone attempt's log from the job's volume.",
            )
        elif verb == "report":
            p.add_argument(
                "-o", "--output", help="Tarball path (default finetune-report-NAME-TIME.tar.gz)."
            )
    return parser


def run(args: argparse.Namespace) -> int:
    target = Target(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        all_namespaces=args.all_namespaces,
        request_timeout=args.request_timeout,
    )
    api = Api(target)
    out = sys.stdout
    verb = ALIASES.get(args.verb, args.verb)
    if verb == "list":
        from finetune_operator.cli import jobs

        return jobs.list_jobs(api, args.all_namespaces, args.watch, out)
    if verb == "get":
        from finetune_operator.cli import jobs

        return jobs.get_job(api, args.name, args.output, out)
    if verb == "status":
        from finetune_operator.cli import jobs

        try:
            return jobs.status(
                api,
                args.name,
                watch=args.watch,
                timeout=args.timeout,
                interval=args.interval,
                out=out,
            )
        except CliError as exc:
            raise CliError(str(exc), r.EXIT_ERROR) from exc
    if verb == "watch":
        from finetune_operator.cli import jobs

        try:
            return jobs.watch(api, args.name, interval=args.interval, out=out)
        except CliError as exc:
            raise CliError(str(exc), r.EXIT_ERROR) from exc
    if verb in ("suspend", "resume"):
        from finetune_operator.cli import control

        return control.set_suspend(api, args.name, verb == "suspend", out)
    if verb in ("restart", "retry"):
        from finetune_operator.cli import control

        request = control.restart if verb == "restart" else control.retry
        return request(api, args.name, out)
    from finetune_operator.cli import diagnose

    if verb == "logs":
        return diagnose.logs(
            api, args.name, args.follow, args.tail, sys.stdout.buffer, every=args.every
        )
    if verb == "events":
        return diagnose.events(api, args.name, out)
    return diagnose.report(api, args.name, args.output, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kubectl-finetune``."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return r.EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
