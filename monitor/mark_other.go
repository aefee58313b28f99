//go:build !linux

package monitor

import "errors"

func prepareForwarded(fd, mark int) error { return errors.New("forwarded probes need Linux (SO_MARK)") }
