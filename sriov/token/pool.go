// Package token serves NSM's SR-IOV tokens: the IDs kubelet hands to pods
// that request an SR-IOV resource ("<serviceDomain>/<capability>"), and
// the mapping from such an ID back to its name, which names the pool of
// the sriov dataplane (sriov.Options.TokenResolver).
//
// IDs are generated once and persisted, so a restarted forwarder still
// knows the IDs that running pods carry in their environment.
package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/uuid"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// FileName is the pool's file in its state directory.
const FileName = "tokens.json"

// EnvPrefix starts the name of the environment variable that carries the
// allocated IDs of a token name, as NSM's tokens.ToEnv writes it.
const EnvPrefix = "NSM_SRIOV_TOKENS_"

// ErrUnknown is returned for an ID the pool did not issue.
var ErrUnknown = errors.New("unknown SR-IOV token id")

// Pool holds the token IDs of every token name. It is safe for
// concurrent use.
type Pool struct {
	path string

	mu     sync.RWMutex
	byName map[string][]string
	byID   map[string]string
}

// file is the persisted form of a Pool.
type file struct {
	Version int                 `json:"version"`
	Tokens  map[string][]string `json:"tokens"`
}

// Counts returns how many tokens each name of cfg gets: a PF serves
// "<serviceDomain>/<capability>" for each of its service domains and
// capabilities, with one token per VF it offers (kernel and vfio ranges).
func Counts(cfg *sriov.Config) (map[string]int, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("token counts: %w", err)
	}
	out := map[string]int{}
	for _, pf := range cfg.PhysicalFunctions {
		n := 0
		for _, r := range pf.VFs {
			k, err := r.Count()
			if err != nil {
				return nil, fmt.Errorf("token counts: pf %s: %w", pf.ID(), err)
			}
			n += k
		}
		for _, d := range pf.ServiceDomains {
			for _, c := range pf.Capabilities {
				out[d+"/"+c] += n
			}
		}
	}
	return out, nil
}

// Open loads the pool persisted in dir (creating dir if needed) and fits
// it to counts: a name keeps the IDs it had, up to its count, and gets new
// ones for the rest; names not in counts are dropped. The result is
// written back atomically when it changed.
func Open(dir string, counts map[string]int) (*Pool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("token pool %q: %w", dir, err)
	}
	p := &Pool{path: filepath.Join(dir, FileName), byName: map[string][]string{}, byID: map[string]string{}}
	var old file
	data, err := os.ReadFile(p.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("token pool: %w", err)
	default:
		if err := json.Unmarshal(data, &old); err != nil {
			return nil, fmt.Errorf("token pool %s: %w", p.path, err)
		}
		if old.Version != 1 {
			return nil, fmt.Errorf("token pool %s: version %d: want 1", p.path, old.Version)
		}
	}
	changed := len(old.Tokens) != len(counts)
	for name, n := range counts {
		if n < 0 {
			return nil, fmt.Errorf("token pool: %s: negative count %d", name, n)
		}
		var ids []string
		for _, id := range old.Tokens[name] {
			if len(ids) == n {
				break
			}
			if _, dup := p.byID[id]; dup || id == "" {
				continue
			}
			ids = append(ids, id)
			p.byID[id] = name
		}
		changed = changed || len(ids) != len(old.Tokens[name])
		for len(ids) < n {
			id := uuid.NewString()
			ids = append(ids, id)
			p.byID[id] = name
			changed = true
		}
		p.byName[name] = ids
	}
	if changed {
		if err := p.save(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// save writes the pool atomically: temporary file, fsync, rename, fsync
// of the directory.
func (p *Pool) save() error {
	data, err := json.MarshalIndent(file{Version: 1, Tokens: p.byName}, "", "  ")
	if err != nil {
		return fmt.Errorf("token pool save: %w", err)
	}
	// Not ".tmp-*": the sriov dataplane's store removes those in the
	// directory they share.
	if err := forwarder.WriteFileAtomic(p.path, data, ".tokens-*"); err != nil {
		return fmt.Errorf("token pool save: %w", err)
	}
	return nil
}

// Resolve returns the name of the token id (sriov.Options.TokenResolver).
func (p *Pool) Resolve(id string) (string, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	name, ok := p.byID[id]
	if !ok {
		return "", fmt.Errorf("%w %q", ErrUnknown, id)
	}
	return name, nil
}

// Names returns the token names, sorted.
func (p *Pool) Names() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Sorted(maps.Keys(p.byName))
}

// IDs returns the IDs of name in their persisted order.
func (p *Pool) IDs(name string) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.byName[name])
}

// ToEnv returns the environment variable that hands ids of name to a
// container, in NSM's format (tokens.ToEnv): NSM_SRIOV_TOKENS_<name> =
// comma-separated IDs.
func ToEnv(name string, ids []string) (key, value string) {
	return EnvPrefix + name, strings.Join(ids, ",")
}
