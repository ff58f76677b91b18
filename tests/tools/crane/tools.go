//go:build tools

// Pins crane for the image build (tests/tools/build.sh crane).
package tools

import _ "github.com/google/go-containerregistry/cmd/crane"
