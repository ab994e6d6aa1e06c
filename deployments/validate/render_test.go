package validate

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// repoRoot is the nsmfwd checkout this module lives in.
const repoRoot = "../.."

// object is one rendered Kubernetes object, decoded into its typed struct.
type object struct {
	GVK       schema.GroupVersionKind
	Name      string
	Namespace string
	Obj       runtime.Object
}

// scheme knows the API groups nsmfwd's manifests may use; any other kind is
// an error, so a typo in apiVersion or kind cannot slip through undecoded.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, rbacv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// decodeStrict decodes one object's JSON into the typed struct for gvk.
// Unknown fields, duplicate fields, fields in the wrong case and values of the
// wrong type are errors, as they are for kube-apiserver's strict validation.
func decodeStrict(gvk schema.GroupVersionKind, data []byte) (runtime.Object, error) {
	obj, err := scheme.New(gvk)
	if err != nil {
		return nil, fmt.Errorf("kind %s: not a kind nsmfwd's manifests use (%w)", gvk, err)
	}
	strict, err := k8sjson.UnmarshalStrict(data, obj, k8sjson.DisallowUnknownFields, k8sjson.DisallowDuplicateFields)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", gvk.Kind, err)
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return nil, fmt.Errorf("decode %s strictly: %s", gvk.Kind, strings.Join(msgs, "; "))
	}
	return obj, nil
}

// render builds the kustomization in dir with the kustomize API (as
// `kubectl apply -k` does) and decodes every object strictly.
func render(dir string) ([]object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var out []object
	var errs []string
	for _, r := range m.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.CurId(), err)
		}
		gvk := schema.FromAPIVersionAndKind(r.GetApiVersion(), r.GetKind())
		obj, err := decodeStrict(gvk, data)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s/%s: %v", r.GetKind(), r.GetName(), err))
			continue
		}
		out = append(out, object{GVK: gvk, Name: r.GetName(), Namespace: r.GetNamespace(), Obj: obj})
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s:\n  %s", dir, strings.Join(errs, "\n  "))
	}
	return out, nil
}

// helpVars runs `nsmfwd --help` from this checkout and returns the NSM_*
// variables it documents with their descriptions: the manifests are checked
// against the real configuration, not a copy of it.
var helpVars = sync.OnceValues(func() (map[string]string, error) {
	cmd := exec.Command("go", "run", "./cmd/nsmfwd", "--help")
	cmd.Dir = repoRoot
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go run ./cmd/nsmfwd --help: %w\n%s", err, stderr.String())
	}
	line := regexp.MustCompile(`^\s+(NSM_[A-Z0-9_]+)\s+\S*\s+(.*)$`)
	vars := make(map[string]string)
	for l := range strings.SplitSeq(string(out), "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			vars[m[1]] = m[2]
		}
	}
	if len(vars) == 0 {
		return nil, fmt.Errorf("nsmfwd --help lists no NSM_* variable:\n%s", out)
	}
	return vars, nil
})

func overlayDirs(t *testing.T) map[string]string {
	t.Helper()
	root := filepath.Join(repoRoot, "deployments", "k8s", "overlays")
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	dirs := make(map[string]string)
	for _, e := range entries {
		if e.IsDir() {
			dirs[e.Name()] = filepath.Join(root, e.Name())
		}
	}
	return dirs
}
