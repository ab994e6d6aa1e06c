// Package netns resolves NSM's network namespace references to namespace
// handles and runs code inside a namespace on a locked OS thread without
// ever leaving a thread behind in the wrong namespace.
package netns
