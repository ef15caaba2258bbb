"""Re-make the vendored KServe CRD schemas from a checkout (bare git directory) of kserve/kserve:

    python tests/deploy/data/kserve/extract.py /work/.mirror/kserve+kserve/repo

Writes <kind>.schema.json.gz here: the openAPIV3Schema of the CRD version KServe stores, from
config/crd/full/serving.kserve.io_<plural>.yaml, and SOURCE.txt naming the commit they came from.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRDS = {"ServingRuntime": "servingruntimes", "ClusterServingRuntime": "clusterservingruntimes",
        "InferenceService": "inferenceservices"}


def main(git_dir: str) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout

    commit = git("rev-parse", "HEAD").strip()
    described = git("describe", "--tags", "HEAD").strip()
    for kind, plural in CRDS.items():
        crd = yaml.safe_load(git("show", f"HEAD:config/crd/full/serving.kserve.io_{plural}.yaml"))
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        doc = {"group": crd["spec"]["group"], "version": version["name"], "kind": kind,
               "schema": version["schema"]["openAPIV3Schema"]}
        with gzip.open(os.path.join(HERE, f"{kind}.schema.json.gz"), "wt", compresslevel=9) as f:
            json.dump(doc, f, separators=(",", ":"), sort_keys=True)
    with open(os.path.join(HERE, "SOURCE.txt"), "w") as f:
        f.write(f"KServe CRD schemas (openAPIV3Schema of the stored version), Apache-2.0, from\n"
                f"github.com/kserve/kserve commit {commit} ({described}),\n"
                f"config/crd/full/serving.kserve.io_{{servingruntimes,clusterservingruntimes,inferenceservices}}.yaml;\n"
                f"made by extract.py in this directory.\n")


if __name__ == "__main__":
    main(sys.argv[1])
