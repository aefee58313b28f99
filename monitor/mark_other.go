//go:build !linux

package monitor

import "errors"

func setMark(fd, mark int) error { return errors.New("SO_MARK needs Linux") }
