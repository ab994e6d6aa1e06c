package guest

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// ModName is the name of the kernel module in file (a path in
// modules.dep: kernel/drivers/net/veth.ko.xz is veth), with '-' as '_',
// as the kernel names modules.
func ModName(file string) string {
	base := filepath.Base(file)
	base = base[:strings.Index(base+".ko", ".ko")]
	return strings.ReplaceAll(base, "-", "_")
}

// ReadLines calls fn with each line of the file at path (depmod's
// indexes, on the host and in the guest).
func ReadLines(path string, fn func(string)) error {
	f, err := os.Open(path) //nolint:gosec // depmod's own index files
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fn(s.Text())
	}
	return s.Err()
}
