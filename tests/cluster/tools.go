//go:build tools

// Package tools pins the Kubernetes commands that tests/cluster/build.sh builds.
// The build tag keeps this file out of every compilation; it only keeps
// `go mod tidy` from dropping the requirement.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
