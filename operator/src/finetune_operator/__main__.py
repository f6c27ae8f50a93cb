"""``finetune-operator``: run the kopf operator standalone (no peering), with a liveness endpoint
and the Prometheus metrics port."""

from __future__ import annotations

import logging
import sys

import kopf


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``finetune-operator`` console script."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kopf logs every successful handler run at INFO; pod events make that noise.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from finetune_operator import handlers, metrics  # registers the handlers

    settings = handlers.operator_settings()
    metrics.start_server(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    namespaces = list(settings.namespaces)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
