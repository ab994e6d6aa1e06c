//go:build linux

// Command guestinit is the init (PID 1) of the guest-VM test tier's guest:
// see package guest.
package main

import "github.com/nsmfwd/nsmfwd/test/vm/guest"

func main() { guest.Main() }
