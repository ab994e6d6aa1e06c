// Package interop checks that nsmfwd works as the forwarder of NSM's own
// sdk components (registry, NSMgr, NSE and NSC from
// github.com/networkservicemesh/sdk), in process. It is its own module so
// the main go.mod does not carry the sdk's dependencies.
package interop

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
