package api

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The alert rules load in Prometheus (promtool check rules) and every alert fires on
// its synthetic series and stays quiet on the others (configs/prometheus/
// kubal-alerts_test.yml). promtool comes from Debian's prometheus package (make setup).
func TestAlertRulesPromtool(t *testing.T) {
	pt, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("KUBAL_REQUIRE_RIGS") == "1" {
			t.Fatal("promtool not installed (apt-get install prometheus; make setup does)")
		}
		t.Skip("SKIP: promtool not installed (apt-get install prometheus; make setup does)")
	}
	for _, args := range [][]string{
		{"check", "rules", "kubal-alerts.yml"},
		{"test", "rules", "kubal-alerts_test.yml"},
	} {
		cmd := exec.Command(pt, args...)
		cmd.Dir = "../configs/prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every alert of the rules file has a firing and a quiet unit test.
func TestAlertRulesEachTested(t *testing.T) {
	rules, err := os.ReadFile("../configs/prometheus/kubal-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("../configs/prometheus/kubal-alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(rules), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(l), "- alert: ")
		if !ok {
			continue
		}
		n++
		for _, want := range []string{"- name: " + name + " fires\n", "- name: " + name + " does not fire\n"} {
			if !strings.Contains(string(tests), want) {
				t.Errorf("kubal-alerts_test.yml lacks a test %q", strings.TrimSpace(want))
			}
		}
	}
	if n == 0 {
		t.Fatal("no alert found in kubal-alerts.yml")
	}
}
