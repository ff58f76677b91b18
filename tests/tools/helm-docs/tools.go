//go:build tools

// Pins helm-docs for the chart README (tests/tools/build.sh helm-docs).
package tools

import _ "github.com/norwoodj/helm-docs/cmd/helm-docs"
