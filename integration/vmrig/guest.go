package vmrig

import (
	"fmt"
	"io"
	"net/http"
)

// Steps prints a scenario's measured results as "<mark> <step>: <text>" lines; the
// host's Boot collects the lines holding the mark as the run's summary.
type Steps struct {
	mark  string
	lines []string
}

// NewSteps returns a Steps whose lines start with mark (e.g. "E2E-STEP").
func NewSteps(mark string) *Steps { return &Steps{mark: mark} }

// Add prints one result line and keeps it.
func (s *Steps) Add(step, format string, args ...any) {
	line := fmt.Sprintf("%s %s: %s", s.mark, step, fmt.Sprintf(format, args...))
	s.lines = append(s.lines, line)
	fmt.Println(line)
}

// Lines returns the lines printed so far.
func (s *Steps) Lines() []string { return append([]string(nil), s.lines...) }

// Control asks the host's control endpoint (base, e.g. http://10.0.2.2:<port>) to do
// what to the API server: POST <base>/apiserver/<what> ("stop" or "start").
func Control(c *http.Client, base, what string) error {
	resp, err := c.Post(base+"/apiserver/"+what, "text/plain", nil)
	if err != nil {
		return fmt.Errorf("host control %s: %w", what, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("host control %s: %s: %s", what, resp.Status, b)
	}
	return nil
}
