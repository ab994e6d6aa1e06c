package validate

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestStrictDecodeRejects shows that the decoder the overlays go through
// rejects what a lenient decoder would silently drop.
func TestStrictDecodeRejects(t *testing.T) {
	ds := schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}
	const ok = `{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"x"},"spec":{"template":{"spec":{"hostNetwork":true,"containers":[{"name":"c","image":"i:1"}]}}}}`
	if _, err := decodeStrict(ds, []byte(ok)); err != nil {
		t.Fatalf("valid DaemonSet rejected: %v", err)
	}
	for name, tc := range map[string]struct{ from, to, want string }{
		"unknown field":   {`"hostNetwork":true`, `"hostNetwork":true,"hostNetworking":true`, "unknown field"},
		"wrong case":      {`"hostNetwork":true`, `"HostNetwork":true`, "unknown field"},
		"wrong type":      {`"hostNetwork":true`, `"hostNetwork":"yes"`, "cannot unmarshal"},
		"duplicate field": {`"hostNetwork":true`, `"hostNetwork":true,"hostNetwork":false`, "duplicate field"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeStrict(ds, []byte(strings.Replace(ok, tc.from, tc.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := decodeStrict(schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DeamonSet"}, []byte(ok)); err == nil {
		t.Fatal("unknown kind accepted")
	}
}
