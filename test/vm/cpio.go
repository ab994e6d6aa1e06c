package vm

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// initramfs collects the files of a guest's initramfs and writes them as
// an uncompressed cpio archive in the "newc" format the kernel unpacks.
type initramfs struct {
	entries map[string]entry
}

type entry struct {
	mode   fs.FileMode
	src    string // file on the host to copy, for regular files
	data   []byte // contents, when src is empty
	target string // for symlinks
}

// newInitramfs starts an image with Debian's merged /usr layout: /bin,
// /sbin, /lib and /lib64 are links into /usr, and paths given under them
// are stored under /usr.
func newInitramfs() *initramfs {
	r := &initramfs{entries: map[string]entry{}}
	for _, d := range mergedUsr {
		r.entries["/"+d] = entry{mode: fs.ModeSymlink | 0o777, target: "usr/" + d}
		r.entries["/usr/"+d] = entry{mode: fs.ModeDir | 0o755}
	}
	return r
}

var mergedUsr = []string{"bin", "sbin", "lib", "lib64"}

func canon(p string) string {
	p = path.Clean("/" + p)
	for _, d := range mergedUsr {
		if p == "/"+d || strings.HasPrefix(p, "/"+d+"/") {
			return "/usr" + p
		}
	}
	return p
}

// dirs adds every parent directory of p.
func (r *initramfs) dirs(p string) {
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := r.entries[d]; !ok {
			r.entries[d] = entry{mode: fs.ModeDir | 0o755}
		}
	}
}

// file adds the host file src at p.
func (r *initramfs) file(p, src string, perm fs.FileMode) {
	p = canon(p)
	r.dirs(p)
	r.entries[p] = entry{mode: perm, src: src}
}

// bytes adds a file with the given contents.
func (r *initramfs) bytes(p string, data []byte, perm fs.FileMode) {
	p = canon(p)
	r.dirs(p)
	r.entries[p] = entry{mode: perm, data: data}
}

// symlink adds a symbolic link p -> target.
func (r *initramfs) symlink(p, target string) {
	p = canon(p)
	r.dirs(p)
	r.entries[p] = entry{mode: fs.ModeSymlink | 0o777, target: target}
}

// write writes the archive, parents before children.
func (r *initramfs) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	ino := 1
	for _, n := range names {
		e := r.entries[n]
		var body io.Reader
		var size int64
		mode := uint32(e.mode.Perm())
		switch {
		case e.mode.IsDir():
			mode |= 0o040000
		case e.mode&fs.ModeSymlink != 0:
			mode |= 0o120000
			body, size = strings.NewReader(e.target), int64(len(e.target))
		case e.src != "":
			mode |= 0o100000
			f, err := os.Open(e.src)
			if err != nil {
				return err
			}
			st, err := f.Stat()
			if err != nil {
				_ = f.Close()
				return err
			}
			defer f.Close()
			body, size = f, st.Size()
		default:
			mode |= 0o100000
			body, size = strings.NewReader(string(e.data)), int64(len(e.data))
		}
		if err := header(bw, strings.TrimPrefix(n, "/"), ino, mode, size); err != nil {
			return err
		}
		if body != nil {
			if _, err := io.CopyN(bw, body, size); err != nil {
				return fmt.Errorf("cpio %s: %w", n, err)
			}
			if err := pad(bw, size); err != nil {
				return err
			}
		}
		ino++
	}
	if err := header(bw, "TRAILER!!!", 0, 0, 0); err != nil {
		return err
	}
	return bw.Flush()
}

func header(w *bufio.Writer, name string, ino int, mode uint32, size int64) error {
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check.
	if _, err := fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0); err != nil {
		return err
	}
	if _, err := w.WriteString(name + "\x00"); err != nil {
		return err
	}
	return pad(w, int64(110+len(name)+1))
}

func pad(w *bufio.Writer, n int64) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
