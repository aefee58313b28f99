package source

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits every edge of kubal holds server names and weights to.
const (
	// MaxHostLen is the longest host name: a DNS name's limit, so that every server
	// can be addressed through the admin API.
	MaxHostLen = 253
	// MaxWeight is the largest IPVS weight ipvsadm accepts.
	MaxWeight = 65535
)

// CheckHost validates a server name from outside (a list line, a JSON key, an etcd
// key, an API path): valid UTF-8 without control characters, at most MaxHostLen
// bytes, and either an IP literal (an IPv6 zone included, itself printable) or a DNS
// name (labels of 1-63 letters, digits, '-' or '_', not starting or ending with '-';
// one trailing dot allowed). A name that passes is safe in logs, /pools, Prometheus
// labels and URL paths.
func CheckHost(h string) error {
	switch {
	case h == "":
		return errors.New("empty host name")
	case !utf8.ValidString(h):
		return fmt.Errorf("host name %q is not valid UTF-8", h)
	case strings.IndexFunc(h, unicode.IsControl) >= 0:
		return fmt.Errorf("host name %q contains a control character", h)
	case len(h) > MaxHostLen:
		return fmt.Errorf("host name of %d bytes is longer than %d", len(h), MaxHostLen)
	}
	if strings.ContainsAny(h, ":%") || looksNumeric(h) {
		a, err := netip.ParseAddr(h)
		if err != nil {
			return fmt.Errorf("host %q is not a valid IP address: %v", h, err)
		}
		if z := a.Zone(); z != "" && strings.IndexFunc(z, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			return fmt.Errorf("host %q: the IPv6 zone must be printable ASCII", h)
		}
		return nil
	}
	name := strings.TrimSuffix(h, ".")
	for _, label := range strings.Split(name, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("host %q is not a valid DNS name: %w", h, err)
		}
	}
	return nil
}

// looksNumeric is true for a name made of digits and dots only (an IPv4 literal, or
// something that must not be mistaken for a DNS name).
func looksNumeric(h string) bool {
	return strings.Trim(h, "0123456789.") == ""
}

func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty label")
	case len(l) > 63:
		return fmt.Errorf("label of %d bytes is longer than 63", len(l))
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("label %q has the character %q", l, c)
		}
	}
	return nil
}

// CheckWeight validates a weight from outside: an integer 0..MaxWeight.
func CheckWeight(w int64) error {
	if w < 0 || w > MaxWeight {
		return fmt.Errorf("weight %d is out of range 0..%d", w, MaxWeight)
	}
	return nil
}
