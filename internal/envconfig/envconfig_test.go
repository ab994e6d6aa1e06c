package envconfig

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

type cfg struct {
	Name    string            `env:"T_NAME" default:"fwd" desc:"the name"`
	Timeout time.Duration     `env:"T_TIMEOUT" default:"5s" desc:"a timeout"`
	On      bool              `env:"T_ON" default:"false" desc:"a switch"`
	List    []string          `env:"T_LIST" default:"a, b" desc:"a list"`
	Level   slog.Level        `env:"T_LEVEL" default:"INFO" desc:"log level"`
	MTU     uint32            `env:"T_MTU" default:"0" desc:"mtu"`
	Labels  map[string]string `env:"T_LABELS" default:"p2p:true, zone : a" desc:"labels"`
	Skipped string
}

func TestLoadDefaultsAndOverrides(t *testing.T) {
	env := map[string]string{"T_TIMEOUT": "1m", "T_ON": "true", "T_LEVEL": "TRACE", "T_MTU": "9000"}
	var c cfg
	if err := Load(&c, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if c.Labels["p2p"] != "true" || c.Labels["zone"] != "a" || len(c.Labels) != 2 {
		t.Fatalf("labels %v", c.Labels)
	}
	var bad cfg
	if err := Load(&bad, func(k string) (string, bool) { return "novalue", k == "T_LABELS" }); err == nil {
		t.Fatal("a label without ':' was accepted")
	}
	if c.Name != "fwd" || c.Timeout != time.Minute || !c.On || strings.Join(c.List, "|") != "a|b" || c.Level != slog.LevelDebug || c.MTU != 9000 {
		t.Fatalf("got %+v", c)
	}
}

func TestLoadErrorNamesVariable(t *testing.T) {
	var c cfg
	err := Load(&c, func(k string) (string, bool) { return "soon", k == "T_TIMEOUT" })
	if err == nil || !strings.Contains(err.Error(), "T_TIMEOUT") {
		t.Fatalf("err = %v, want one naming T_TIMEOUT", err)
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	var b bytes.Buffer
	Usage(&b, &cfg{})
	for _, v := range []string{"T_NAME", "T_TIMEOUT", "T_ON", "T_LIST", "T_LEVEL", "T_MTU", "the name", "5s"} {
		if !strings.Contains(b.String(), v) {
			t.Errorf("usage lacks %q:\n%s", v, b.String())
		}
	}
}
