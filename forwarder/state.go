package forwarder

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Store persists one record per connection in a directory. Every write is
// atomic (temporary file, fsync, rename, fsync of the directory), so a
// forwarder killed at any instant finds either the old or the new record.
type Store struct {
	dir string
}

const storeSuffix = ".json"

// OpenStore creates dir if needed and returns a store on it.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %q: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(id string) string {
	return filepath.Join(s.dir, "conn-"+base64.RawURLEncoding.EncodeToString([]byte(id))+storeSuffix)
}

// Put writes the record of id atomically.
func (s *Store) Put(id string, data []byte) error {
	if err := WriteFileAtomic(s.path(id), data, ".tmp-*"); err != nil {
		return fmt.Errorf("state put %q: %w", id, err)
	}
	return nil
}

// WriteFileAtomic replaces the file at path with data so that a crash
// leaves either the old or the new contents: a temporary file named by
// tmpPattern (os.CreateTemp) in the same directory, fsync, rename, fsync
// of the directory. A failed write leaves no temporary file.
func WriteFileAtomic(path string, data []byte, tmpPattern string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tmpPattern)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// Delete removes the record of id; a missing record is not an error.
func (s *Store) Delete(id string) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state delete %q: %w", id, err)
	}
	return syncDir(s.dir)
}

// Load returns every record by connection id. Leftover temporary files from
// an interrupted write are removed.
func (s *Store) Load() (map[string][]byte, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("state load: %w", err)
	}
	out := make(map[string][]byte)
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		enc, ok := strings.CutPrefix(name, "conn-")
		if !ok || !strings.HasSuffix(enc, storeSuffix) {
			continue
		}
		id, err := base64.RawURLEncoding.DecodeString(strings.TrimSuffix(enc, storeSuffix))
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, name)) //nolint:gosec // G304: name comes from listing the store's own directory

		if err != nil {
			return nil, fmt.Errorf("state load %q: %w", name, err)
		}
		out[string(id)] = data
	}
	return out, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir) //nolint:gosec // a state directory of the caller's
	if err != nil {
		return fmt.Errorf("state sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("state sync: %w", err)
	}
	return nil
}
