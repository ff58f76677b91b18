#!/usr/bin/env bash
# Regenerates charts/sm-injector/README.md from values.yaml and
# README.md.gotmpl with helm-docs built from its Go module (tests/tools/).
# tests/chart.rs fails when the checked-in README differs from this output.
set -euo pipefail
cd "$(dirname "$0")/../../charts/sm-injector"
"$(../../tests/tools/build.sh helm-docs)"
