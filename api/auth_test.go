package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
)

const carolToken = "carol-0123456789abcdef0"

func identifyToken(a *Auth, tok string) (string, error) {
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return a.identify(r)
}

// A token removed from the file stops working after Reload (before: the file was read
// once at start, and a removed token kept working); a bad file keeps the tokens in
// force and is reported by Err until fixed.
func TestAuthReload(t *testing.T) {
	path := writeFile(t, "tokens", "alice:"+aliceToken+"\nbob:"+bobToken+"\n")
	a, err := LoadAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	if name, err := identifyToken(a, bobToken); err != nil || name != "bob" {
		t.Fatalf("bob before reload: %q %v", name, err)
	}
	if err := os.WriteFile(path, []byte("alice:"+aliceToken+"\ncarol:"+carolToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]string{aliceToken: "alice", carolToken: "carol", bobToken: ""} {
		name, err := identifyToken(a, tok)
		if want == "" {
			if !errors.Is(err, errBadToken) {
				t.Errorf("removed token: %q %v, want 403", name, err)
			}
		} else if name != want || err != nil {
			t.Errorf("%s: %q %v", want, name, err)
		}
	}

	for _, bad := range []string{"alice:short\n", "no colon here\n"} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := a.Reload(); err == nil || a.Err() == nil {
			t.Fatalf("%q: Reload %v, Err %v", bad, err, a.Err())
		}
		if name, err := identifyToken(a, carolToken); name != "carol" || err != nil {
			t.Fatalf("after a failed reload the tokens in force must stay: %q %v", name, err)
		}
	}
	os.Remove(path)
	if err := a.Reload(); err == nil || a.Err() == nil {
		t.Fatal("a missing token file reloaded without error")
	}
	if err := os.WriteFile(path, []byte("alice:"+aliceToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil || a.Err() != nil || a.Tokens() != 1 {
		t.Fatalf("fixed file: %v %v %d", err, a.Err(), a.Tokens())
	}
	empty, _ := LoadAuth("")
	if empty.Reload() != nil || empty.Err() != nil {
		t.Fatal("an Auth without a file has nothing to reload")
	}
}

// Reloads while requests are checked (run with -race): every check sees one whole
// token set, a token in every version always works.
func TestAuthReloadConcurrent(t *testing.T) {
	v1 := "alice:" + aliceToken + "\nbob:" + bobToken + "\n"
	v2 := "alice:" + aliceToken + "\ncarol:" + carolToken + "\n"
	path := writeFile(t, "tokens", v1)
	a, err := LoadAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if name, err := identifyToken(a, aliceToken); name != "alice" || err != nil {
					errs <- errors.New("alice refused during a reload")
					return
				}
				if name, err := identifyToken(a, bobToken); err == nil && name != "bob" || err != nil && !errors.Is(err, errBadToken) {
					errs <- errors.New("bob mis-identified")
					return
				}
			}
		}()
	}
	for i := range 200 {
		content := v1
		if i%2 == 1 {
			content = v2
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}
