package cli

import (
	"strings"
	"testing"
)

// A NetworkService as a user handles it: applied, listed with its address
// on each network, described with its profiles, deleted — its address goes
// back to the network's pool — and gone from get.
func TestNetworkServiceGetDescribeDelete(t *testing.T) {
	_, dir := upForTest(t, "netconfig")
	waitDefaultNetworkReady(t, dir)
	mustRun(t, dir, "apiVersion: podvisor.io/v1alpha1\nkind: NetworkService\nmetadata: {name: pod-dns}\nspec: {type: dns, networks: [default]}\n",
		"apply", "-f", "-")
	var list string
	eventually(t, "pod-dns listed with an address on default", func() bool {
		list, _, _ = run(t, dir, "", "get", "networkservices")
		return strings.Contains(list, "pod-dns") && strings.Contains(list, "default=10.88.") && strings.Contains(list, "Ready")
	})
	if !strings.Contains(list, "1/1") || !strings.Contains(list, "dns") {
		t.Fatalf("get networkservices:\n%s\nwant pod-dns, dns, 1/1 networks", list)
	}
	eventually(t, "the service's address counted on default", func() bool {
		out, _, _ := run(t, dir, "", "get", "network", "default")
		return hasColumn(out, "IPS", "1")
	})
	out := mustRun(t, dir, "", "describe", "networkservice", "pod-dns")
	for _, want := range []string{"Name:", "pod-dns", "Type:", "dns", "Profiles:", "default", "port 53", "pv-default", "pod.podvisor.local"} {
		if !strings.Contains(out, want) {
			t.Fatalf("describe networkservice:\n%s\nwant %q", out, want)
		}
	}
	if out := mustRun(t, dir, "", "get", "netsvc", "pod-dns", "-o", "json"); !strings.Contains(out, `"profiles"`) {
		t.Fatalf("get -o json:\n%s", out)
	}

	if _, errOut, code := run(t, dir, "", "delete", "networkservice", "nope"); code != 1 || !strings.Contains(errOut, "networkservice nope not found") {
		t.Fatalf("delete of a missing service: exit %d, %q", code, errOut)
	}
	if out := mustRun(t, dir, "", "delete", "networkservice", "pod-dns"); !strings.Contains(out, "networkservice pod-dns deletion requested") {
		t.Fatalf("delete: %q", out)
	}
	eventually(t, "pod-dns gone", func() bool {
		out, _, _ := run(t, dir, "", "get", "networkservices")
		return !strings.Contains(out, "pod-dns")
	})
	eventually(t, "the address back in default's pool", func() bool {
		out, _, _ := run(t, dir, "", "get", "network", "default")
		return hasColumn(out, "IPS", "0")
	})
	if _, errOut, code := run(t, dir, "", "describe", "networkservice", "pod-dns"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("describe after delete: exit %d, %q", code, errOut)
	}

	// A service on a network that does not exist serves nothing: get says
	// so, with the reason and the network.
	mustRun(t, dir, "apiVersion: podvisor.io/v1alpha1\nkind: NetworkService\nmetadata: {name: lonely}\nspec: {type: dns, networks: [nosuchnet]}\n",
		"apply", "-f", "-")
	eventually(t, "lonely listed as serving nothing", func() bool {
		list, _, _ = run(t, dir, "", "get", "networkservice", "lonely")
		return strings.Contains(list, "lonely")
	})
	if !strings.Contains(list, "0/1") || !strings.Contains(list, "Pending: NetworkMissing") || !strings.Contains(list, `network "nosuchnet" does not exist`) {
		t.Fatalf("get networkservice lonely:\n%s\nwant 0/1, Pending: NetworkMissing and the network named", list)
	}
}

// hasColumn reports whether a one-object table has value in the column
// whose header starts with name (headers may hold spaces: IPS USED).
func hasColumn(table, name, value string) bool {
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 {
		return false
	}
	at := strings.Index(lines[0], name)
	if at < 0 || at >= len(lines[1]) {
		return false
	}
	f := strings.Fields(lines[1][at:])
	return len(f) > 0 && f[0] == value
}
