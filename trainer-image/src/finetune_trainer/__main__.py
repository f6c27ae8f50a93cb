"""Process entry of ``finetune-trainer`` (console script) and ``python -m finetune_trainer``.

Installs the SIGTERM/SIGINT handlers as its first statement, before ``main`` (and, through it,
torch and transformers) is imported: measured ~20 ms after exec instead of ~8 s. See stop.py.
"""

from finetune_trainer import stop

stop.install(hold=True)  # signals wait (pending) until main()'s try releases them

import os  # noqa: E402 - after the handlers, on purpose
import sys  # noqa: E402


def main() -> int:
    try:
        stop.release()  # a signal that came during the lines above is raised here, and caught
        # train: read the model's weights into the page cache while torch/Unsloth import
        # (stdlib only; imported here so a signal during its import is handled below too)
        from finetune_trainer import prefetch

        prefetch.start(sys.argv[1:])
        from finetune_trainer.main import main as run
    except stop.Interrupted as exc:  # during the imports themselves: main's handling not there yet
        from finetune_trainer.errors import EXIT_SUSPENDED, write_termination_log

        write_termination_log(f"Suspended: {exc}; nothing to save yet, exited at once")
        return EXIT_SUSPENDED
    code = run()
    # Skip the interpreter's teardown: with torch, transformers and datasets loaded it takes ~2 s
    # (measured on 2 busy cores) that a suspend would spend holding the GPUs. Everything the
    # trainer writes is closed (and fsynced) by now; logs and stdio are flushed here.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
