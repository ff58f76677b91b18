//go:build tools

// Pins helm for the chart tests (tests/tools/build.sh helm).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
