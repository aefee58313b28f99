package ipvs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Sysctl is one kernel setting a mode of kubal needs, by its dotted sysctl name
// (net.ipv4.vs.sloppy_tcp), with the value wanted and why (shown when it is wrong).
type Sysctl struct {
	Name, Value, Why string
}

func (s Sysctl) String() string { return s.Name + " = " + s.Value }

// SysctlBackend reads and writes the sysctls of the network namespace the IPVS table
// lives in. Backends that can implement it; the Reconciler keeps the wanted ones set
// (SetSysctls).
type SysctlBackend interface {
	Sysctl(name string) (string, error)
	SetSysctl(name, value string) error
}

// ProcSys is the SysctlBackend of the calling process's network namespace: the files
// under a /proc/sys directory ("" = /proc/sys).
type ProcSys string

func (p ProcSys) path(name string) (string, error) {
	// A name is a dotted path of plain components: never a way out of the directory.
	parts := strings.Split(name, ".")
	for _, c := range parts {
		if c == "" || c == ".." || strings.ContainsAny(c, "/\x00") {
			return "", fmt.Errorf("sysctl %q: not a sysctl name", name)
		}
	}
	root := string(p)
	if root == "" {
		root = "/proc/sys"
	}
	return filepath.Join(append([]string{root}, parts...)...), nil
}

// Sysctl implements SysctlBackend.
func (p ProcSys) Sysctl(name string) (string, error) {
	path, err := p.path(name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("sysctl %s: %s does not exist (is the ip_vs module loaded?)", name, path)
	}
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// SetSysctl implements SysctlBackend.
func (p ProcSys) SetSysctl(name, value string) error {
	path, err := p.path(name)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("sysctl -w %s=%s: %w", name, value, err)
	}
	return nil
}

// syncSysctls sets every wanted sysctl that differs and reads it back; the result is
// what is still wrong, one error per sysctl naming its value, the wanted one and why.
func syncSysctls(b Backend, want []Sysctl, set func(s Sysctl, was string)) []error {
	if len(want) == 0 {
		return nil
	}
	sb, ok := b.(SysctlBackend)
	if !ok {
		return []error{fmt.Errorf("this IPVS backend cannot set sysctls; set them by hand: %s", sysctlList(want))}
	}
	var errs []error
	for _, s := range want {
		cur, err := sb.Sysctl(s.Name)
		if err == nil && cur == s.Value {
			continue
		}
		if err == nil {
			set(s, cur)
			if err = sb.SetSysctl(s.Name, s.Value); err == nil {
				cur, err = sb.Sysctl(s.Name)
			}
		}
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("sysctl %s should be %s (%s): %w", s.Name, s.Value, s.Why, err))
		case cur != s.Value:
			errs = append(errs, fmt.Errorf("sysctl %s is %s, should be %s (%s): set but not in force", s.Name, cur, s.Value, s.Why))
		}
	}
	return errs
}

func sysctlList(want []Sysctl) string {
	out := make([]string, len(want))
	for i, s := range want {
		out[i] = s.Name + "=" + s.Value
	}
	return strings.Join(out, " ")
}
