package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseBool implements ConfigParser/ConfigDict booleans: t,true,y,yes,on,1 and
// f,false,n,no,off,0, case-insensitive, stripped.
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "t", "true", "y", "yes", "on", "1":
		return true, nil
	case "f", "false", "n", "no", "off", "0":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean: %q (want yes/no, true/false, on/off, 1/0)", s)
}

func (o Options) errf(key string, format string, args ...any) error {
	v := o[key]
	return Diagnostic{Pos: v.Pos, Key: key, Msg: fmt.Sprintf(format, args...)}.asError()
}

// diagError makes a single Diagnostic usable as an error.
type diagError Diagnostic

func (d diagError) Error() string { return Diagnostic(d).String() }

func (d Diagnostic) asError() error { return diagError(d) }

// Has reports whether key is set.
func (o Options) Has(key string) bool { _, ok := o[key]; return ok }

// String returns the value of key, or def when missing.
func (o Options) String(key, def string) string {
	if v, ok := o[key]; ok {
		return strings.TrimSpace(v.Raw)
	}
	return def
}

// Int returns key as an int (PyBal getint), or def when missing.
func (o Options) Int(key string, def int) (int, error) {
	v, ok := o[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v.Raw))
	if err != nil {
		return def, o.errf(key, "not an integer: %q", v.Raw)
	}
	return n, nil
}

// Float returns key as a float (PyBal getfloat), or def when missing.
func (o Options) Float(key string, def float64) (float64, error) {
	v, ok := o[key]
	if !ok {
		return def, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v.Raw), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return def, o.errf(key, "not a number: %q", v.Raw)
	}
	return f, nil
}

// Bool returns key as a ConfigParser boolean, or def when missing.
func (o Options) Bool(key string, def bool) (bool, error) {
	v, ok := o[key]
	if !ok {
		return def, nil
	}
	b, err := ParseBool(v.Raw)
	if err != nil {
		return def, o.errf(key, "%v", err)
	}
	return b, nil
}

// Seconds returns key, a number of seconds (int or float, as PyBal), as a Duration.
func (o Options) Seconds(key string, def time.Duration) (time.Duration, error) {
	v, ok := o[key]
	if !ok {
		return def, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v.Raw), 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f > 1e9 {
		return def, o.errf(key, "not a number of seconds: %q", v.Raw)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// Literal returns key parsed as a Python literal; ok is false when missing.
func (o Options) Literal(key string) (lit Literal, ok bool, err error) {
	v, ok := o[key]
	if !ok {
		return Literal{}, false, nil
	}
	lit, err = ParseLiteral(strings.TrimSpace(v.Raw))
	if err != nil {
		return Literal{}, true, o.errf(key, "does not parse as a Python literal: %v", err)
	}
	return lit, true, nil
}

// Strings returns key as a Python list of strings, or def when missing.
func (o Options) Strings(key string, def []string) ([]string, error) {
	lit, ok, err := o.Literal(key)
	if err != nil || !ok {
		return def, err
	}
	ss, err := lit.Strings()
	if err != nil {
		return def, o.errf(key, "%v", err)
	}
	return ss, nil
}

// Key returns the full option name of a monitor option ("proxyfetch.url").
func (m MonitorOptions) Key(opt string) string { return m.prefix + opt }

// Has reports whether the monitor option is set.
func (m MonitorOptions) Has(opt string) bool { return m.opts.Has(m.prefix + opt) }

// Pos returns where the monitor option was set (zero Pos when missing).
func (m MonitorOptions) Pos(opt string) Pos { return m.opts[m.prefix+opt].Pos }

// String, Int, Float, Bool, Seconds, Literal and Strings read `<monitor>.<opt>`.
func (m MonitorOptions) String(opt, def string) string { return m.opts.String(m.prefix+opt, def) }
func (m MonitorOptions) Int(opt string, def int) (int, error) {
	return m.opts.Int(m.prefix+opt, def)
}
func (m MonitorOptions) Float(opt string, def float64) (float64, error) {
	return m.opts.Float(m.prefix+opt, def)
}
func (m MonitorOptions) Bool(opt string, def bool) (bool, error) {
	return m.opts.Bool(m.prefix+opt, def)
}
func (m MonitorOptions) Seconds(opt string, def time.Duration) (time.Duration, error) {
	return m.opts.Seconds(m.prefix+opt, def)
}
func (m MonitorOptions) Literal(opt string) (Literal, bool, error) {
	return m.opts.Literal(m.prefix + opt)
}
func (m MonitorOptions) Strings(opt string, def []string) ([]string, error) {
	return m.opts.Strings(m.prefix+opt, def)
}

// Keys returns the option names (without the monitor prefix) that are set, for
// unknown-key warnings and for keying shared probes.
func (m MonitorOptions) Keys() map[string]string {
	out := map[string]string{}
	for k, v := range m.opts {
		if strings.HasPrefix(k, m.prefix) {
			out[strings.TrimPrefix(k, m.prefix)] = v.Raw
		}
	}
	return out
}
