//go:build tools

// Package tools pins the etcd server that tests/cluster/build.sh builds, in a
// module of its own so that etcd keeps the dependency versions it was tested with.
package tools

import _ "go.etcd.io/etcd/server/v3"
