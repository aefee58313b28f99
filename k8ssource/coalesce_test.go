package k8ssource

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubal/kubal/source"
)

// TestCoalescing: a burst of Node events is batched: consecutive Updates are at least
// `coalesce` apart (bounded frequency), however fast the events come. The in-memory fake clientset is enough here (the loop's batching is under
// test, not the API server); the rig tests cover the real watch path.
func TestCoalescing(t *testing.T) {
	client := fake.NewClientset()
	m, _ := newMetrics(nil, "burst")
	s := &Source{url: URL{}, log: slog.New(slog.DiscardHandler), client: client, health: newHealth(), m: m}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx, rec) }()
	defer func() { cancel(); <-done }()
	rec.waitSet(t, 10*time.Second, "initial empty set", func(s source.Set) bool { return len(s) == 0 })

	const burst = 300
	start := time.Now()
	for i := range burst {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%03d", i)}}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rec.waitSet(t, 10*time.Second, "all nodes", func(s source.Set) bool { return len(s) == burst })
	took := time.Since(start)
	time.Sleep(3 * coalesce) // nothing more may follow
	rec.mu.Lock()
	updates, times := rec.updates[1:], rec.times[1:]
	rec.mu.Unlock()
	bound := int(took/coalesce) + 1
	t.Logf("%d node events over %s -> %d Updates (bound %d)", burst, took, len(updates), bound)
	if len(updates) > bound {
		t.Errorf("%d Updates for %d events over %s: more than one per %s window", len(updates), burst, took, coalesce)
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < coalesce {
			t.Errorf("Updates %d and %d only %s apart, want >= %s", i-1, i, gap, coalesce)
		}
	}
	// Every Update is a full set that only grows during this burst.
	for i := 1; i < len(updates); i++ {
		if len(updates[i]) < len(updates[i-1]) {
			t.Errorf("Update %d has %d servers, the one before %d", i, len(updates[i]), len(updates[i-1]))
		}
	}
}
