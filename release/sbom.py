#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM of the sm-injector binary, from the Cargo graph.

Usage: release/sbom.py <rust target> <version> > sbom.cdx.json

Reads `cargo metadata --locked --filter-platform <target>` and walks the
resolved graph from sm-injector along normal (not dev, not build) edges: the
crates compiled into the binary for that target, each with its version,
package URL, licence and the checksum Cargo.lock pins.
"""

import json
import subprocess
import sys
import uuid

target, version = sys.argv[1], sys.argv[2]
meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1", "--filter-platform", target],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(p["id"] for p in meta["packages"] if p["name"] == "sm-injector")

# Cargo.lock's checksums, by (name, version).
checksums = {}
lock = open("Cargo.lock").read().split("[[package]]")
for block in lock[1:]:
    fields = dict(
        (k.strip(), v.strip().strip('"'))
        for k, v in (line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
    )
    if "checksum" in fields:
        checksums[(fields["name"], fields["version"])] = fields["checksum"]

seen, todo = set(), [root]
while todo:
    pid = todo.pop()
    if pid in seen:
        continue
    seen.add(pid)
    for dep in nodes[pid]["deps"]:
        if any(k["kind"] is None for k in dep["dep_kinds"]):
            todo.append(dep["pkg"])


def ref(p):
    return f"pkg:cargo/{p['name']}@{p['version']}"


components = []
for pid in sorted(seen - {root}, key=lambda i: (packages[i]["name"], packages[i]["version"])):
    p = packages[pid]
    c = {"type": "library", "bom-ref": ref(p), "name": p["name"], "version": p["version"], "purl": ref(p)}
    if p.get("license"):
        c["licenses"] = [{"expression": p["license"]}]
    sha = checksums.get((p["name"], p["version"]))
    if sha:
        c["hashes"] = [{"alg": "SHA-256", "content": sha}]
    components.append(c)

root_pkg = packages[root]
bom = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'sm-injector/{version}/{target}')}",
    "version": 1,
    "metadata": {
        "component": {
            "type": "application",
            "bom-ref": ref(root_pkg),
            "name": "sm-injector",
            "version": version,
            "purl": ref(root_pkg),
            "licenses": [{"expression": root_pkg.get("license") or "NOASSERTION"}],
        },
        "properties": [{"name": "rust:target", "value": target}],
    },
    "components": components,
    "dependencies": [
        {
            "ref": ref(packages[pid]),
            "dependsOn": sorted(
                {
                    ref(packages[d["pkg"]])
                    for d in nodes[pid]["deps"]
                    if d["pkg"] in seen and any(k["kind"] is None for k in d["dep_kinds"])
                }
            ),
        }
        for pid in sorted(seen, key=lambda i: packages[i]["name"])
    ],
}
json.dump(bom, sys.stdout, indent=1, sort_keys=True)
print()
