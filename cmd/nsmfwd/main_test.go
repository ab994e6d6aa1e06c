package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestHelpListsEveryVariable(t *testing.T) {
	var b bytes.Buffer
	if err := run([]string{"--help"}, &b); err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !strings.Contains(b.String(), f.Tag.Get("env")) || f.Tag.Get("desc") == "" {
			t.Errorf("--help lacks %s or its description:\n%s", f.Tag.Get("env"), b.String())
		}
	}
}

func TestUnknownArgument(t *testing.T) {
	if err := run([]string{"--bogus"}, &bytes.Buffer{}); err == nil {
		t.Fatal("unknown argument accepted")
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := t.TempDir() + "/sub/fwd.sock"
	lis, cleanup, err := listen("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	_ = lis.Close() // leaves the socket file, as a crash would
	cleanup()
	lis, cleanup, err = listen("unix://" + path)
	if err != nil {
		t.Fatalf("second listen on a stale socket: %v", err)
	}
	_ = lis.Close()
	cleanup()
}
