// Package workflows has no code. Its tests check that the GitHub Actions
// workflows in .github/workflows agree with the module, so that the two
// cannot drift apart unnoticed:
//   - bench.yml installs the VPP release that govpp's generated binary API
//     (go.fd.io/govpp in go.mod) was generated for, and the image's VPP
//     base (deployments/Dockerfile) is of that release too;
//   - every workflow sets up go.mod's Go version;
//   - ci.yml installs the apt packages .ci/run installs;
//   - every action is pinned to a commit.
//
// They need neither root nor network (beyond the module cache that any
// build of the module fills).
package workflows
