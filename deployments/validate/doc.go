// Package validate checks nsmfwd's deployment artefacts offline: it renders
// every kustomize overlay under deployments/k8s/overlays with the kustomize
// API, decodes each object strictly into the typed Kubernetes API structs and
// applies the semantic checks a forwarder DaemonSet needs; it checks the
// planned SR-IOV config, the Grafana dashboard and the Dockerfile's pins.
//
// It is its own Go module so that the Kubernetes and kustomize dependencies
// stay out of nsmfwd's go.mod. Run it with `make validate` (go test ./...).
package validate
