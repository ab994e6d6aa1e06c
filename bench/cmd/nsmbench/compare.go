package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nsmfwd/nsmfwd/bench"
)

// compare writes, as Markdown, how a run's figures moved against an
// earlier run's, and fails with a *bench.RegressionError (exit status 3)
// when a judged figure got worse beyond the threshold. The bench workflow
// runs it against the previous main run.
func compare(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	threshold := fs.Float64("threshold", bench.DefaultThreshold*100, "percent by which a judged figure may get worse before it is a regression")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: nsmbench compare [-threshold PCT] OLD NEW\n"+
			"OLD and NEW are results.json files or directories holding one.\n"+
			"Exit status: 0 no regression, 3 regressions, 1 error.\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 || *threshold < 0 {
		fs.Usage()
		return errors.New("compare: want -threshold >= 0 and two results")
	}
	old, err := readResults(fs.Arg(0))
	if err != nil {
		return err
	}
	cur, err := readResults(fs.Arg(1))
	if err != nil {
		return err
	}
	c := bench.Compare(old, cur, *threshold/100)
	if err := c.WriteMarkdown(stdout); err != nil {
		return err
	}
	if n := len(c.Regressions()); n > 0 {
		return &bench.RegressionError{N: n, Threshold: c.Threshold}
	}
	return nil
}

// readResults reads a results.json, given as the file or its directory.
func readResults(path string) (*bench.Results, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, "results.json")
	}
	f, err := os.Open(filepath.Clean(path))
	if err != nil {
		return nil, fmt.Errorf("compare: %w", err)
	}
	defer f.Close()
	r, err := bench.ReadJSON(f)
	if err != nil {
		return nil, fmt.Errorf("compare %s: %w", path, err)
	}
	return r, nil
}
