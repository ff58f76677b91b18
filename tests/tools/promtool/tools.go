//go:build tools

// Pins promtool for the alert tests (tests/tools/build.sh promtool).
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
