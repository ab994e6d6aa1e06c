package main

import (
	"fmt"
	"os"

	yaml "go.yaml.in/yaml/v2"
)

// deviceSelector is NSM_DEVICE_SELECTOR_FILE, in cmd-forwarder-vpp's
// format: each host interface with the label selectors that pick it.
//
//	interfaces:
//	  - name: eth1
//	    matches:
//	      - labelSelector:
//	          - via: gw1
type deviceSelector struct {
	Interfaces []struct {
		Name    string `yaml:"name"`
		Matches []struct {
			LabelSelector []map[string]string `yaml:"labelSelector"`
		} `yaml:"matches"`
	} `yaml:"interfaces"`
}

// loadDeviceSelector reads path into a map from the "via" label's value
// to the host interface; "" (no file) is an empty map.
func loadDeviceSelector(path string) (map[string]string, error) {
	out := map[string]string{}
	if path == "" {
		return out, nil
	}
	b, err := os.ReadFile(path) // #nosec G304 -- the operator's configuration file
	if err != nil {
		return nil, fmt.Errorf("config: NSM_DEVICE_SELECTOR_FILE: %w", err)
	}
	var sel deviceSelector
	if err := yaml.UnmarshalStrict(b, &sel); err != nil {
		return nil, fmt.Errorf("config: NSM_DEVICE_SELECTOR_FILE %s: %w", path, err)
	}
	for _, i := range sel.Interfaces {
		if i.Name == "" {
			return nil, fmt.Errorf("config: NSM_DEVICE_SELECTOR_FILE %s: an interface without a name", path)
		}
		for _, m := range i.Matches {
			for _, ls := range m.LabelSelector {
				for k, v := range ls {
					if k != "via" {
						return nil, fmt.Errorf("config: NSM_DEVICE_SELECTOR_FILE %s: interface %s: label %q: only via is matched", path, i.Name, k)
					}
					if prev, dup := out[v]; dup && prev != i.Name {
						return nil, fmt.Errorf("config: NSM_DEVICE_SELECTOR_FILE %s: via=%s selects both %s and %s", path, v, prev, i.Name)
					}
					out[v] = i.Name
				}
			}
		}
	}
	return out, nil
}
