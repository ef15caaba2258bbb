"""The deployment files of deploy/ as data: KServe manifests (YAML), the vendored KServe CRD schemas,
the Dockerfile's instructions."""
from __future__ import annotations

import gzip
import json
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SCHEMAS = Path(__file__).parent / "data" / "kserve"


def manifests() -> dict[str, dict]:
    """file name -> the document, for every KServe manifest (kustomization.yaml is not one)."""
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(KSERVE.glob("*.yaml")) if p.name != "kustomization.yaml"}


def crd_schema(kind: str) -> dict:
    """KServe's openAPIV3Schema for ``kind`` made strict: an object that lists its properties takes no
    other (Kubernetes drops unknown fields without a word, `kubectl --validate=strict` refuses them)."""
    with gzip.open(SCHEMAS / f"{kind}.schema.json.gz", "rt") as f:
        doc = json.load(f)

    def strict(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)
        return node

    return {"apiVersion": f"{doc['group']}/{doc['version']}", "schema": strict(doc["schema"])}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not pending and (not s or s.startswith("#")):
            continue
        pending += s[:-1] + " " if s.endswith("\\") else s
        if not s.endswith("\\"):
            op, _, rest = pending.partition(" ")
            out.append((op.upper(), rest.strip()))
            pending = ""
    return out


def exec_form(args: str) -> list[str]:
    """The argument list of an instruction in exec form (a JSON array) or shell form."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)
