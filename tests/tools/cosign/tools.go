//go:build tools

// Pins cosign for the release test (tests/tools/build.sh cosign).
package tools

import _ "github.com/sigstore/cosign/v2/cmd/cosign"
