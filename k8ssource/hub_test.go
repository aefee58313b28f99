package k8ssource

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kubal/kubal/source"
)

// TestHub: a Source started after its set was published gets it at once; later sets
// and outages follow; a slow Source only ever sees the latest set (the controller
// never waits for it); a removed group leaves a running Source on its last set.
func TestHub(t *testing.T) {
	h := newHub()
	h.publish("ns/a|IPv4", source.Set{"n1": {Host: "n1", Enabled: true}})
	src := &groupSource{hub: h, key: "ns/a|IPv4"}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx, rec) }()
	defer func() { cancel(); <-done }()
	rec.waitSet(t, time.Second, "the set published before Run", func(s source.Set) bool { _, ok := s["n1"]; return len(s) == 1 && ok })

	for i := range 100 { // a burst: never blocks the publisher
		h.publish("ns/a|IPv4", source.Set{"n1": {Host: "n1", Weight: i}})
	}
	rec.waitSet(t, time.Second, "the latest of a burst", func(s source.Set) bool { return s["n1"].Weight == 99 })

	h.fail(errors.New("API down"))
	if err := rec.waitFailed(t, time.Second, true); err.Error() != "API down" {
		t.Fatalf("Failed(%v)", err)
	}
	h.fail(nil)
	rec.waitFailed(t, time.Second, false)

	h.publish("ns/b|IPv4", source.Set{"x": {Host: "x"}})
	h.remove("ns/a|IPv4")
	time.Sleep(20 * time.Millisecond)
	if last, _, _ := rec.snapshot(); last["n1"].Weight != 99 || len(last) != 1 {
		t.Fatalf("another group's set or a removal reached the Source: %v", last)
	}
}
