"""Kueue's webhook configurations for a Kueue process on this host (used by hack/kueue.sh).

Reads Kueue's generated webhook manifests (config/components/webhook/manifests.yaml of the module
source) and writes the subset the tests need: the pod webhooks, limited to namespaces carrying
the opt-in label, and the webhooks of Kueue's own API group; every clientConfig points at the
host process by URL with the test CA as caBundle. The other frameworks' webhooks are dropped:
their integrations are off, so their paths would answer 404 and (failurePolicy Fail) block every
Job, Deployment… of the cluster.

    python kueue-webhooks.py MANIFESTS URL CA_FILE LABEL_KEY LABEL_VALUE > webhooks.yaml
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import yaml


def keep(webhook: dict[str, Any]) -> str | None:
    """'pods', 'kueue' or None (dropped), from the webhook's rules."""
    rules = webhook.get("rules") or []
    groups = {g for rule in rules for g in rule.get("apiGroups") or []}
    resources = {r for rule in rules for r in rule.get("resources") or []}
    if groups == {""} and resources == {"pods"}:
        return "pods"
    if groups == {"kueue.x-k8s.io"}:
        return "kueue"
    return None


def main(argv: list[str]) -> int:
    manifests, url, ca_file, key, value = argv
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    out = []
    for doc in yaml.safe_load_all(Path(manifests).read_text()):
        if not doc:
            continue
        kind = doc["kind"]
        webhooks = []
        for wh in doc.get("webhooks") or []:
            what = keep(wh)
            if what is None:
                continue
            path = wh["clientConfig"]["service"]["path"]
            wh["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca}
            if what == "pods":
                wh["namespaceSelector"] = {"matchLabels": {key: value}}
            wh["timeoutSeconds"] = 10
            webhooks.append(wh)
        prefix = "mutating" if kind == "MutatingWebhookConfiguration" else "validating"
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": kind,
                "metadata": {"name": f"fto-kueue-{prefix}"},
                "webhooks": webhooks,
            }
        )
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
