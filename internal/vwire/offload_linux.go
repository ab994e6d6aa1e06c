package vwire

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
)

// ethtool's legacy ioctl interface (linux/ethtool.h).
const (
	ethtoolSTXCSUM = 0x17 // set tx checksum offload
)

type ethtoolValue struct {
	cmd, data uint32
}

// ifreqData is struct ifreq with its ifr_data member, 40 bytes on 64-bit.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

// DisableTxChecksum turns transmit checksum offload off on the interface
// name in namespace ns, so the stack computes every checksum itself (which
// also turns TSO off). A datapath that moves raw frames, such as VPP's
// AF_XDP, would otherwise pass on checksums left for offload unfinished.
func DisableTxChecksum(ns netns.NsHandle, name string) error {
	return inetns.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("tx checksum off %s: %w", name, err)
		}
		defer unix.Close(fd)
		ev := ethtoolValue{cmd: ethtoolSTXCSUM}
		var ifr ifreqData
		copy(ifr.name[:len(ifr.name)-1], name)
		// The SIOCETHTOOL ABI passes a pointer inside struct ifreq.
		ifr.data = uintptr(unsafe.Pointer(&ev)) // #nosec G103
		arg := uintptr(unsafe.Pointer(&ifr))    // #nosec G103
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, arg)
		runtime.KeepAlive(&ev)
		runtime.KeepAlive(&ifr)
		if errno != 0 {
			return fmt.Errorf("tx checksum off %s: %w", name, errno)
		}
		return nil
	})
}
