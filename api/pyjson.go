package api

import (
	"strconv"
	"unicode/utf8"

	"github.com/kubal/kubal/pool"
)

// The PyBal endpoints are written by hand, not with encoding/json, so that they are
// byte-identical to Python's json.dumps defaults: ", " and ": " separators, keys in
// PyBal's order, ensure_ascii escaping (\uXXXX for non-ASCII, no HTML escaping).

const hexDigits = "0123456789abcdef"

// appendPyString appends s as json.dumps(s) would (ensure_ascii=True). Invalid UTF-8
// becomes U+FFFD, as Python's decode(errors="replace") would show it.
func appendPyString(b []byte, s string) []byte {
	b = append(b, '"')
	if plainASCII(s) { // host and pool names: copy in one go
		b = append(b, s...)
		return append(b, '"')
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"':
				b = append(b, '\\', '"')
			case c == '\\':
				b = append(b, '\\', '\\')
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == 0x7f: // Python escapes everything outside ' '..'~'
				b = appendU(b, rune(c))
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r > 0xffff { // UTF-16 surrogate pair, as Python writes it
			r -= 0x10000
			b = appendU(b, 0xd800+(r>>10)&0x3ff)
			b = appendU(b, 0xdc00+r&0x3ff)
			continue
		}
		b = appendU(b, r)
	}
	return append(b, '"')
}

// plainASCII reports whether s needs no escaping at all.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

func appendPyBool(b []byte, v bool) []byte {
	if v {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

// appendDumpState appends PyBal's Server.dumpState(): exactly the keys pooled, weight,
// up and enabled (safe-service-restart and the diamond collector break on extra keys).
func appendDumpState(b []byte, s *pool.ServerState) []byte {
	b = append(b, `{"pooled": `...)
	b = appendPyBool(b, s.Pooled)
	b = append(b, `, "weight": `...)
	b = strconv.AppendInt(b, int64(s.Weight), 10)
	b = append(b, `, "up": `...)
	b = appendPyBool(b, s.Up)
	b = append(b, `, "enabled": `...)
	b = appendPyBool(b, s.Enabled)
	return append(b, '}')
}

// appendTextStatus appends pool.ServerState.TextStatus() without allocating.
func appendTextStatus(b []byte, s *pool.ServerState) []byte {
	if s.Enabled {
		b = append(b, "enabled/"...)
	} else {
		b = append(b, "disabled/"...)
	}
	switch {
	case s.Up:
		b = append(b, "up/"...)
	case partiallyUp(s):
		b = append(b, "partially up/"...)
	default:
		b = append(b, "down/"...)
	}
	if s.Pooled {
		return append(b, "pooled"...)
	}
	return append(b, "not pooled"...)
}

// partiallyUp matches pool.ServerState.TextStatus: a monitor up, or no address yet.
func partiallyUp(s *pool.ServerState) bool {
	if !s.Ready {
		return true
	}
	for _, m := range s.Monitors {
		if m.Up {
			return true
		}
	}
	return false
}
