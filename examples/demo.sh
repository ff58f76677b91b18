#!/usr/bin/env bash
# The demo: a local control plane and moto (the test bed), sm-injector serving
# them, the seed's example Deployment, and its pods' resolved environment.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prepare demo
cargo test --locked --test demo
