#!/usr/bin/env python3
"""A minimal dynamic hostPath provisioner for the local cluster's StorageClass `local-path`.

Polls the API once a second (standard library only, so it runs before any venv exists):
- a Pending PVC whose class uses provisioner ``fto.local/hostpath`` gets a PV bound to it (via
  ``claimRef``) backed by ``<root>/<namespace>-<pvc>``, a directory made world-writable so the
  trainer pods' non-root user (uid 1000) can write;
- a Released PV of ours is deleted together with its directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request

PROVISIONER = "fto.local/hostpath"
log = logging.getLogger("provisioner")


class Api:
    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        self.server = server.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def call(self, method: str, path: str, body: object | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self.ctx, timeout=15) as resp:
            return json.loads(resp.read() or b"{}")


def our_classes(api: Api) -> set[str]:
    items = api.call("GET", "/apis/storage.k8s.io/v1/storageclasses")["items"]
    return {c["metadata"]["name"] for c in items if c.get("provisioner") == PROVISIONER}


def provision(api: Api, pvc: dict, root: str, node: str) -> None:
    meta = pvc["metadata"]
    ns, name = meta["namespace"], meta["name"]
    pv_name = f"pvc-{meta['uid']}"
    path = os.path.join(root, f"{ns}-{name}")
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    spec = pvc["spec"]
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            "labels": {"fto.local/hostpath": "true"},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec["storageClassName"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": ns,
                "name": name,
                "uid": meta["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }
    try:
        api.call("POST", "/api/v1/persistentvolumes", pv)
        log.info("provisioned %s for %s/%s at %s", pv_name, ns, name, path)
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise


def reclaim(api: Api, pv: dict, root: str) -> None:
    path = pv["spec"].get("hostPath", {}).get("path", "")
    if path.startswith(root.rstrip("/") + "/"):
        shutil.rmtree(path, ignore_errors=True)
    try:
        api.call("DELETE", f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
        log.info("deleted %s and %s", pv["metadata"]["name"], path)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise


def reconcile(api: Api, root: str, node: str) -> None:
    classes = our_classes(api)
    pvs = api.call("GET", "/api/v1/persistentvolumes")["items"]
    claimed = {
        pv["spec"]["claimRef"]["uid"] for pv in pvs if pv["spec"].get("claimRef", {}).get("uid")
    }
    for pvc in api.call("GET", "/api/v1/persistentvolumeclaims")["items"]:
        if (
            pvc["spec"].get("storageClassName") in classes
            and not pvc["spec"].get("volumeName")
            and pvc["status"].get("phase") == "Pending"
            and pvc["metadata"]["uid"] not in claimed
            and not pvc["metadata"].get("deletionTimestamp")
        ):
            provision(api, pvc, root, node)
    for pv in pvs:
        ours = pv["metadata"].get("annotations", {}).get("pv.kubernetes.io/provisioned-by")
        if ours == PROVISIONER and pv["status"].get("phase") in ("Released", "Failed"):
            reclaim(api, pv, root)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", required=True)
    p.add_argument("--pki", required=True, help="directory with ca.crt, admin.crt, admin.key")
    p.add_argument("--root", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pki = args.pki
    api = Api(args.server, f"{pki}/ca.crt", f"{pki}/admin.crt", f"{pki}/admin.key")
    os.makedirs(args.root, exist_ok=True)
    log.info("watching PVCs of provisioner %s, volumes under %s", PROVISIONER, args.root)
    while True:
        try:
            reconcile(api, args.root, args.node)
        except Exception as e:  # keep serving through apiserver restarts
            log.warning("reconcile failed: %s", e)
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
