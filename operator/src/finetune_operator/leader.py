"""Leader election on a coordination.k8s.io Lease, so that two replicas can run and one acts.

The replica holding the Lease reconciles; the other watches (kopf keeps its caches warm) but
makes no change, and takes the Lease over once the holder has not renewed it for its duration
(a crashed or partitioned leader), then resyncs every job. Writes to the Lease carry its
resourceVersion, so two replicas can never both win one round. A leader that cannot renew for
a whole duration steps down by itself before another can take over. The Lease is released on a
clean shutdown, so a rolling update hands over at once.

``next_spec`` (pure) decides; ``Elector`` does the I/O through ``kube``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_operator import kube
from finetune_operator.lifecycle.pods import parse_time

log = logging.getLogger(__name__)

_MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class LeaseState:
    """What matters about the Lease object."""

    holder: str | None
    renewed: datetime | None
    duration: int
    transitions: int
    resource_version: str | None


def lease_state(obj: dict[str, Any]) -> LeaseState:
    spec = obj.get("spec") or {}
    return LeaseState(
        holder=spec.get("holderIdentity") or None,
        renewed=parse_time(spec.get("renewTime")),
        duration=int(spec.get("leaseDurationSeconds") or 15),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
    )


def next_spec(
    current: LeaseState | None, me: str, now: datetime, duration: int
) -> dict[str, Any] | None:
    """The Lease spec to write to hold (or take) the lease now, or None while another holder's
    lease is still valid."""
    stamp = now.strftime(_MICRO)
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": duration,
        "renewTime": stamp,
    }
    if current is None:
        return {**spec, "acquireTime": stamp, "leaseTransitions": 0}
    if current.holder == me:
        return spec
    expired = current.renewed is None or now >= current.renewed + timedelta(
        seconds=current.duration
    )
    if current.holder is None or expired:
        return {**spec, "acquireTime": stamp, "leaseTransitions": current.transitions + 1}
    return None


class Elector:
    """Holds the Lease ``namespace/name`` for ``identity`` while it can; ``leading`` says so."""

    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: int = 15,
        on_elected: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.on_elected, self.clock = duration, on_elected, clock
        self.leading = threading.Event()
        self._renewed: datetime | None = None

    def step(self) -> bool:
        """One round: read the Lease, renew or take it when allowed. Whether this replica leads.

        A lost race (409) or another valid holder ends leadership at once; an unreachable API
        ends it two thirds of a duration after the last renewal, before any other replica may
        take the Lease over."""
        now = self.clock()
        try:
            obj = kube.get_lease(self.namespace, self.name)
            current = lease_state(obj) if obj is not None else None
            spec = next_spec(current, self.identity, now, self.duration)
            if spec is not None:
                rv = current.resource_version if current is not None else None
                kube.write_lease(self.namespace, self.name, spec, rv)
                self._renewed = now
            leading = spec is not None
        except kube.ConflictError:
            leading = False
        except kube.KubeError as exc:
            log.info("lease %s/%s: %s", self.namespace, self.name, exc)
            grace = timedelta(seconds=self.duration * 2 / 3)
            leading = (
                self.leading.is_set() and self._renewed is not None and now < self._renewed + grace
            )
        self._set(leading)
        return leading

    def _set(self, leading: bool) -> None:
        if leading and not self.leading.is_set():
            log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
            self.leading.set()
            self.on_elected()
        elif not leading and self.leading.is_set():
            log.warning("no longer leading (lease %s/%s)", self.namespace, self.name)
            self.leading.clear()

    def run(self, stop: threading.Event) -> None:
        """Renew every third of the duration until ``stop``; then release the Lease."""
        while not stop.is_set():
            self.step()
            stop.wait(self.duration / 3)
        self.release()

    def release(self) -> None:
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            obj = kube.get_lease(self.namespace, self.name)
            if obj is not None and lease_state(obj).holder == self.identity:
                spec = {"holderIdentity": None, "leaseDurationSeconds": 1}
                kube.write_lease(self.namespace, self.name, spec, lease_state(obj).resource_version)
        except kube.KubeError as exc:
            log.info("could not release lease %s/%s: %s", self.namespace, self.name, exc)
