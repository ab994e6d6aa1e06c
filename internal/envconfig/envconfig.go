// Package envconfig fills a typed configuration struct from environment
// variables. Each field carries its variable name, default and description in
// tags, so the same struct produces the --help text:
//
//	Name string `env:"NSM_NAME" default:"forwarder" desc:"name of this forwarder"`
//
// Supported field types: string, bool, int, uint32, time.Duration,
// []string (comma-separated), map[string]string (comma-separated key:value
// pairs, as NSM_LABELS) and slog.Level.
package envconfig

import (
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Load sets every tagged field of *cfg from lookup (os.LookupEnv in
// production) or from its default.
func Load(cfg any, lookup func(string) (string, bool)) error {
	v := reflect.ValueOf(cfg)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("envconfig: want a pointer to a struct, got %T", cfg)
	}
	v = v.Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("env")
		if name == "" {
			continue
		}
		raw, ok := lookup(name)
		if !ok {
			raw = f.Tag.Get("default")
		}
		if err := set(v.Field(i), raw); err != nil {
			return fmt.Errorf("%s=%q: %w", name, raw, err)
		}
	}
	return nil
}

var durationType = reflect.TypeFor[time.Duration]()
var levelType = reflect.TypeFor[slog.Level]()

func set(field reflect.Value, raw string) error {
	switch {
	case field.Type() == durationType:
		if raw == "" {
			field.SetInt(0)
			return nil
		}
		d, err := time.ParseDuration(raw)
		if err != nil {
			return err
		}
		field.SetInt(int64(d))
		return nil
	case field.Type() == levelType:
		var l slog.Level
		// NSM uses logrus' level names; map those slog lacks to the
		// closest slog level.
		switch strings.ToUpper(strings.TrimSpace(raw)) {
		case "TRACE":
			raw = "DEBUG"
		case "WARNING":
			raw = "WARN"
		case "FATAL", "PANIC":
			raw = "ERROR"
		}
		if err := l.UnmarshalText([]byte(raw)); err != nil {
			return err
		}
		field.SetInt(int64(l))
		return nil
	}
	switch field.Kind() {
	case reflect.String:
		field.SetString(raw)
	case reflect.Bool:
		if raw == "" {
			field.SetBool(false)
			return nil
		}
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return err
		}
		field.SetBool(b)
	case reflect.Int:
		n, err := strconv.Atoi(raw)
		if err != nil {
			return err
		}
		field.SetInt(int64(n))
	case reflect.Uint32:
		n, err := strconv.ParseUint(raw, 10, 32)
		if err != nil {
			return err
		}
		field.SetUint(n)
	case reflect.Map:
		if field.Type() != reflect.TypeFor[map[string]string]() {
			return fmt.Errorf("unsupported map type %s", field.Type())
		}
		out := map[string]string{}
		for kv := range strings.SplitSeq(raw, ",") {
			if kv = strings.TrimSpace(kv); kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, ":")
			if !ok || strings.TrimSpace(k) == "" {
				return fmt.Errorf("%q is not key:value", kv)
			}
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		field.Set(reflect.ValueOf(out))
	case reflect.Slice:
		if field.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("unsupported slice type %s", field.Type())
		}
		var out []string
		for s := range strings.SplitSeq(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		field.Set(reflect.ValueOf(out))
	default:
		return fmt.Errorf("unsupported field type %s", field.Type())
	}
	return nil
}

// Usage writes one line per variable: name, default and description.
func Usage(w io.Writer, cfg any) {
	t := reflect.TypeOf(cfg)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tMEANING")
	for i := range t.NumField() {
		f := t.Field(i)
		if name := f.Tag.Get("env"); name != "" {
			def := f.Tag.Get("default")
			if def == "" {
				def = `""`
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, def, f.Tag.Get("desc"))
		}
	}
	_ = tw.Flush()
}
