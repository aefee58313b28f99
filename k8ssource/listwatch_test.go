package k8ssource

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
)

// refused is a real "connection refused", as the rest client returns it.
func refused(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = net.Dial("tcp", addr)
	if err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	return &url.Error{Op: "Get", URL: "https://" + addr + "/api/v1/nodes", Err: err}
}

func TestTransient(t *testing.T) {
	gr := schema.GroupResource{Resource: "nodes"}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused(t), true},
		{"EOF", &url.Error{Op: "Get", URL: "https://x", Err: io.EOF}, true},
		{"503", apierrors.NewServiceUnavailable("starting"), true},
		{"500", apierrors.NewInternalError(errors.New("etcd")), true},
		{"429", apierrors.NewTooManyRequests("storage is (re)initializing", 1), true},
		{"410 must reach the reflector", apierrors.NewResourceExpired("too old resource version"), false},
		{"403 must surface", apierrors.NewForbidden(gr, "", errors.New("rbac")), false},
		{"401 must surface", apierrors.NewUnauthorized("token"), false},
		{"404", apierrors.NewNotFound(gr, "x"), false},
		{"bad certificate", &url.Error{Op: "Get", URL: "https://x", Err: x509.UnknownAuthorityError{}}, false},
		{"cancelled", context.Canceled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := transient(tt.err); got != tt.want {
				t.Fatalf("transient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// fastLW is a retryLW with test timings around list/watch funcs.
func fastLW(h *health, list func() (runtime.Object, error), w func() (watch.Interface, error)) *retryLW {
	lw := newRetryLW(resNodes, h, nil,
		func(context.Context, metav1.ListOptions) (runtime.Object, error) { return list() },
		func(context.Context, metav1.ListOptions) (watch.Interface, error) { return w() })
	lw.every, lw.quiet, lw.resume = time.Millisecond, 50*time.Millisecond, time.Minute
	return lw
}

func healthErr(h *health) string {
	err, answered := h.status([]string{resNodes})
	switch {
	case !answered:
		return "unanswered"
	case err != nil:
		return err.Error()
	}
	return ""
}

// TestRetryLWList: a List failing at the connection level is retried in place
// until it succeeds (the reflector's backoff never sees it); anything else
// reaches the reflector at once, a 410 without being taken for an outage.
func TestRetryLWList(t *testing.T) {
	down := refused(t)
	tests := []struct {
		name      string
		errs      []error // returned by the successive calls; then success
		wantCalls int
		wantErr   string // returned to the reflector
		wantState string // health afterwards ("" ok, else a substring)
	}{
		{"outage", []error{down, apierrors.NewServiceUnavailable("starting"), down}, 4, "", ""},
		{"forbidden", []error{apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New("rbac"))}, 1, "forbidden", "forbidden"},
		{"expired", []error{apierrors.NewResourceExpired("too old")}, 1, "too old", "unanswered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHealth()
			calls := 0
			var states []string
			lw := fastLW(h, func() (runtime.Object, error) {
				calls++
				if calls > 1 {
					states = append(states, healthErr(h))
				}
				if calls <= len(tt.errs) {
					return nil, tt.errs[calls-1]
				}
				return &corev1.NodeList{}, nil
			}, nil)
			_, err := lw.ListWithContext(context.Background(), metav1.ListOptions{})
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if calls != tt.wantCalls {
				t.Fatalf("%d calls, want %d", calls, tt.wantCalls)
			}
			if got := healthErr(h); (got == "") != (tt.wantState == "") || !strings.Contains(got, tt.wantState) {
				t.Fatalf("health %q, want %q", got, tt.wantState)
			}
			for _, s := range states {
				if s == "" || s == "unanswered" {
					t.Fatalf("health during the outage: %q, want the failure", states)
				}
			}
		})
	}

	t.Run("cancelled during an outage", func(t *testing.T) {
		lw := fastLW(newHealth(), func() (runtime.Object, error) { return nil, down }, nil)
		lw.every = time.Hour
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		if _, err := lw.ListWithContext(ctx, metav1.ListOptions{}); err == nil {
			t.Fatal("no error after cancel")
		}
	})
}

// TestRetryLWWatch: after a failure, a watch is "answered again" only when it is not
// expired (first event not an error, or quiet), and a watch-list only at the end of
// its initial state; a watch that cannot be resumed for long ends in an error that
// makes the reflector relist (not one it would take for a 410 or a refusal).
func TestRetryLWWatch(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", ResourceVersion: "5"}}
	end := &corev1.Node{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "6",
		Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}}
	expired := apierrors.NewResourceExpired("too old resource version").Status()
	tests := []struct {
		name    string
		initial bool
		events  []watch.Event
		want    []string // health after each event is read ("" ok, else a substring)
		after   string   // health once the stream stays quiet
	}{
		{"resumed, expired", false, []watch.Event{{Type: watch.Error, Object: &expired}}, []string{"refused"}, "refused"},
		{"resumed, an event", false, []watch.Event{{Type: watch.Modified, Object: node}}, []string{""}, ""},
		{"resumed, quiet", false, nil, nil, ""},
		{"watch-list", true, []watch.Event{{Type: watch.Added, Object: node}, {Type: watch.Bookmark, Object: end}}, []string{"refused", ""}, ""},
		{"watch-list, no end", true, []watch.Event{{Type: watch.Added, Object: node}}, []string{"refused"}, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHealth()
			fake := watch.NewFake()
			failures := 1
			lw := fastLW(h, nil, func() (watch.Interface, error) {
				if failures > 0 {
					failures--
					return nil, refused(t)
				}
				return fake, nil
			})
			opts := metav1.ListOptions{}
			if tt.initial {
				opts.SendInitialEvents = &tt.initial
			}
			w, err := lw.WatchWithContext(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			if got := healthErr(h); !strings.Contains(got, "refused") {
				t.Fatalf("health after the refused watch: %q", got)
			}
			for i, ev := range tt.events {
				go fake.Action(ev.Type, ev.Object)
				select {
				case got := <-w.ResultChan():
					if got.Type != ev.Type {
						t.Fatalf("event %d: %s, want %s", i, got.Type, ev.Type)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("event %d not forwarded", i)
				}
				if got := healthErr(h); (got == "") != (tt.want[i] == "") || !strings.Contains(got, tt.want[i]) {
					t.Fatalf("health after event %d: %q, want %q", i, got, tt.want[i])
				}
			}
			time.Sleep(3 * lw.quiet)
			if got := healthErr(h); (got == "") != (tt.after == "") || !strings.Contains(got, tt.after) {
				t.Fatalf("health after a quiet stream: %q, want %q", got, tt.after)
			}
			w.Stop()
			if _, open := <-w.ResultChan(); open {
				t.Fatal("result channel open after Stop")
			}
		})
	}

	t.Run("healthy watch passes through", func(t *testing.T) {
		h := newHealth()
		h.set(resNodes, nil)
		fake := watch.NewFake()
		lw := fastLW(h, nil, func() (watch.Interface, error) { return fake, nil })
		w, err := lw.WatchWithContext(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if w != watch.Interface(fake) {
			t.Fatalf("got %T, want the watch itself", w)
		}
	})

	t.Run("unreachable: relist", func(t *testing.T) {
		h := newHealth()
		var calls atomic.Int32
		lw := fastLW(h, nil, func() (watch.Interface, error) { calls.Add(1); return nil, refused(t) })
		lw.resume = 30 * time.Millisecond
		_, err := lw.WatchWithContext(context.Background(), metav1.ListOptions{ResourceVersion: "5"})
		var relist *relistError
		if !errors.As(err, &relist) || utilnet.IsConnectionRefused(err) || apierrors.IsResourceExpired(err) || apierrors.IsTooManyRequests(err) {
			t.Fatalf("err = %v (%T), want a relistError client-go neither resumes nor takes for a 410", err, err)
		}
		if calls.Load() < 2 {
			t.Fatalf("%d watch calls: not retried before giving up", calls.Load())
		}
		if !isRoutineWatchEnd(err) {
			t.Fatal("the error handler would record the relist as a failure of its own")
		}
	})
}
