// Package guest is the inside of the guest-VM test tier: the manifest the
// host writes into the guest's initramfs, and the guest's init, which
// loads kernel modules, does the operator's setup (enabling VFs), runs the
// test binaries and streams their output to the host over a serial port.
package guest

// ManifestPath is where the host puts the manifest in the initramfs.
const ManifestPath = "/manifest.json"

// Markers the init writes on the output port, each on a line of its own,
// so the host can tell which test binary ran and how it ended.
const (
	// MarkRun is followed by the run's name.
	MarkRun = "NSMFWD-GUEST-RUN "
	// MarkExit is followed by the run's name and its exit code.
	MarkExit = "NSMFWD-GUEST-EXIT "
	// MarkReady is followed by the seconds from kernel start to the first run.
	MarkReady = "NSMFWD-GUEST-READY "
	// MarkError is followed by why the init itself failed.
	MarkError = "NSMFWD-GUEST-ERROR "
	// MarkDone ends the output; the guest powers off after it.
	MarkDone = "NSMFWD-GUEST-DONE"
)

// Manifest tells the guest's init what to do.
type Manifest struct {
	// Output is the device the runs' output goes to (a serial port the
	// host reads); the kernel's console is another.
	Output string `json:"output"`
	// Modules are loaded, with their dependencies, before anything else.
	Modules []string `json:"modules"`
	// Writes are done in order after the Up links have carrier: the
	// operator's setup of the machine, such as sriov_numvfs (igb's VFs
	// probed while their PF is down never get a link).
	Writes []Write `json:"writes"`
	// Up lists PCI addresses whose netdev is set up, and waited for until
	// it has carrier, before the writes (the operator's PF).
	Up []string `json:"up"`
	// Netdevs maps an environment variable to a PCI address: the variable
	// is set, for every run, to the name of that device's netdev.
	Netdevs map[string]string `json:"netdevs"`
	// Runs are the test binaries, run one after the other.
	Runs []Run `json:"runs"`
}

// Write puts Value into the file at Path.
type Write struct {
	Path  string `json:"path"`
	Value string `json:"value"`
}

// Run is one program the guest runs.
type Run struct {
	Name string   `json:"name"`
	Path string   `json:"path"`
	Args []string `json:"args"`
	Env  []string `json:"env"`
}
