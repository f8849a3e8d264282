package deploy

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podvisor/podvisor/deploy/internal/manifests"
)

// endpoint is one side of a connection: a pod (namespace labels, pod labels,
// named ports) or an address outside the cluster.
type endpoint struct {
	name      string
	namespace map[string]string
	pod       map[string]string
	ports     map[string]int32
	ip        netip.Addr // set for external addresses
}

const podvisorNamespace = "podvisor"

var namespaceLabels = map[string]string{"kubernetes.io/metadata.name": podvisorNamespace}

// podEndpoint is the pod of a workload in an overlay.
func podEndpoint(t *testing.T, objs []manifests.Object, name string) endpoint {
	t.Helper()
	w := findWorkload(t, objs, name)
	ports := map[string]int32{}
	for _, c := range w.template.Spec.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
	}
	return endpoint{name: name, namespace: namespaceLabels, pod: w.template.Labels, ports: ports}
}

var clusterDNS = endpoint{
	name:      "kube-dns",
	namespace: map[string]string{"kubernetes.io/metadata.name": "kube-system"},
	pod:       map[string]string{"k8s-app": "kube-dns"},
	ports:     map[string]int32{"dns": 53},
}

func external(name, ip string) endpoint {
	return endpoint{name: name, ip: netip.MustParseAddr(ip)}
}

// allowed evaluates the NetworkPolicies of the podvisor namespace the way
// the API defines them: a pod selected by a policy of a direction is
// isolated in that direction, and then only what some such policy's rules
// admit passes; a connection needs both the source's egress and the
// destination's ingress (endpoints outside the namespace are not isolated
// by these policies).
func allowed(t *testing.T, policies []*networkingv1.NetworkPolicy, from, to endpoint, protocol corev1.Protocol, port int32) bool {
	t.Helper()
	inNamespace := func(e endpoint) bool {
		return e.pod != nil && e.namespace["kubernetes.io/metadata.name"] == podvisorNamespace
	}
	egress := !inNamespace(from) || isAllowed(t, policies, networkingv1.PolicyTypeEgress, from, to, protocol, port)
	ingress := !inNamespace(to) || isAllowed(t, policies, networkingv1.PolicyTypeIngress, to, from, protocol, port)
	return egress && ingress
}

// isAllowed: may `self` exchange traffic with `peer` on the port, in
// direction dir as seen from self? For ingress the port is self's.
func isAllowed(t *testing.T, policies []*networkingv1.NetworkPolicy, dir networkingv1.PolicyType, self, peer endpoint, protocol corev1.Protocol, port int32) bool {
	isolated := false
	portOwner := peer
	if dir == networkingv1.PolicyTypeIngress {
		portOwner = self
	}
	for _, p := range policies {
		if !selects(t, &p.Spec.PodSelector, self.pod) || !hasType(p, dir) {
			continue
		}
		isolated = true
		if dir == networkingv1.PolicyTypeEgress {
			for _, r := range p.Spec.Egress {
				if peersMatch(t, r.To, peer) && portsMatch(r.Ports, portOwner, protocol, port) {
					return true
				}
			}
		} else {
			for _, r := range p.Spec.Ingress {
				if peersMatch(t, r.From, peer) && portsMatch(r.Ports, portOwner, protocol, port) {
					return true
				}
			}
		}
	}
	return !isolated
}

func hasType(p *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	for _, pt := range p.Spec.PolicyTypes {
		if pt == dir {
			return true
		}
	}
	// Without policyTypes, Ingress always applies and Egress when rules exist.
	return len(p.Spec.PolicyTypes) == 0 && (dir == networkingv1.PolicyTypeIngress || len(p.Spec.Egress) > 0)
}

func selects(t *testing.T, sel *metav1.LabelSelector, l map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	return s.Matches(labels.Set(l))
}

func peersMatch(t *testing.T, peers []networkingv1.NetworkPolicyPeer, e endpoint) bool {
	if len(peers) == 0 {
		return true // no `to`/`from`: any peer
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			if !e.ip.IsValid() {
				continue // ipBlocks are meant for addresses outside the cluster
			}
			if prefix := netip.MustParsePrefix(p.IPBlock.CIDR); prefix.Contains(e.ip) && !excepted(p.IPBlock.Except, e.ip) {
				return true
			}
			continue
		}
		if e.pod == nil {
			continue
		}
		if p.NamespaceSelector == nil {
			if e.namespace["kubernetes.io/metadata.name"] != podvisorNamespace {
				continue
			}
		} else if !selects(t, p.NamespaceSelector, e.namespace) {
			continue
		}
		if p.PodSelector == nil || selects(t, p.PodSelector, e.pod) {
			return true
		}
	}
	return false
}

func excepted(except []string, ip netip.Addr) bool {
	for _, c := range except {
		if netip.MustParsePrefix(c).Contains(ip) {
			return true
		}
	}
	return false
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, owner endpoint, protocol corev1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto != protocol {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int && p.Port.IntVal == port:
			return true
		case p.Port.Type == intstr.Int && p.EndPort != nil && p.Port.IntVal <= port && port <= *p.EndPort:
			return true
		case p.Port.Type == intstr.String && owner.ports[p.Port.StrVal] == port && port != 0:
			return true
		}
	}
	return false
}

type flow struct {
	from, to string
	protocol corev1.Protocol
	port     int32
}

// The conversations podvisor needs pass the policies; a few it must not
// have do not.
func TestNetworkPolicies(t *testing.T) {
	redisClients := []string{"scheduler", "imagecache"}
	notRedisClients := []string{"provisioner", "netconfig", "migration"}
	cases := map[string]struct {
		want, deny   []flow
		want2, deny2 []flow            // the prod dashboard's
		external     map[string]string // extra endpoints: name -> IP
	}{
		"dev": {
			want: append(append(
				flows(services, "simulator", 4222, 8989),
				flows(services, "jaeger", 4318, 4317)...),
				flows(redisClients, "redis", 6379)...),
			deny: append(append(
				flows(notRedisClients, "redis", 6379),
				flow{"redis", "simulator", corev1.ProtocolTCP, 4222},
				flow{"scheduler", "provisioner", corev1.ProtocolTCP, 8081}),
				flow{"simulator", "redis", corev1.ProtocolTCP, 6379}),
		},
		"prod": {
			external: map[string]string{"vcenter": "192.0.2.10", "registry": "198.51.100.7", "internet": "203.0.113.9"},
			want: append(append(append(append(
				flows(services, "nats", 4222),
				flows(redisClients, "redis", 6379)...),
				flows(services, "vcenter", 443)...),
				flow{"imagecache", "registry", corev1.ProtocolTCP, 443},
				flow{"nats", "nats", corev1.ProtocolTCP, 6222}),
				flows([]string{"monitoring"}, "nats", 8222)...),
			// The dashboard: its users (through an ingress or a port
			// forward) and Prometheus reach it; it reaches the bus and Redis.
			want2: append(flows([]string{"dashboard"}, "nats", 4222),
				flow{"dashboard", "redis", corev1.ProtocolTCP, 6379},
				flow{"monitoring", "dashboard", corev1.ProtocolTCP, 8443},
				flow{"monitoring", "dashboard", corev1.ProtocolTCP, 8081}),
			// It reaches no vCenter, registry, service or internet.
			deny2: []flow{{"dashboard", "vcenter", corev1.ProtocolTCP, 443}, {"dashboard", "registry", corev1.ProtocolTCP, 443},
				{"dashboard", "internet", corev1.ProtocolTCP, 443}, {"dashboard", "provisioner", corev1.ProtocolTCP, 8081},
				{"redis", "dashboard", corev1.ProtocolTCP, 8443}},
			deny: append(append(
				flows(notRedisClients, "redis", 6379),
				flow{"redis", "nats", corev1.ProtocolTCP, 4222},
				flow{"provisioner", "registry", corev1.ProtocolTCP, 443},
				flow{"imagecache", "internet", corev1.ProtocolTCP, 443},
				flow{"nats", "vcenter", corev1.ProtocolTCP, 443},
				flow{"scheduler", "provisioner", corev1.ProtocolTCP, 8081},
				flow{"monitoring", "redis", corev1.ProtocolTCP, 6379}),
				flow{"redis", "vcenter", corev1.ProtocolTCP, 443}),
		},
	}
	for overlay, tc := range cases {
		t.Run(overlay, func(t *testing.T) {
			objs := build(t, "overlays/"+overlay)
			policies := objectsOf[*networkingv1.NetworkPolicy](objs)
			ends := map[string]endpoint{
				"monitoring": {name: "monitoring", namespace: map[string]string{"kubernetes.io/metadata.name": "monitoring"}, pod: map[string]string{"app": "prometheus"}},
			}
			for _, w := range workloads(objs) {
				ends[w.name] = podEndpoint(t, objs, w.name)
			}
			for name, ip := range tc.external {
				ends[name] = external(name, ip)
			}
			// Every podvisor pod resolves names.
			for _, w := range workloads(objs) {
				for _, proto := range []corev1.Protocol{corev1.ProtocolUDP, corev1.ProtocolTCP} {
					if !allowed(t, policies, ends[w.name], clusterDNS, proto, 53) {
						t.Errorf("%s cannot reach the cluster DNS over %s", w.name, proto)
					}
				}
			}
			for _, f := range append(tc.want, tc.want2...) {
				if !allowed(t, policies, ends[f.from], ends[f.to], f.protocol, f.port) {
					t.Errorf("%s -> %s:%d is blocked; podvisor needs it", f.from, f.to, f.port)
				}
			}
			for _, f := range append(tc.deny, tc.deny2...) {
				if allowed(t, policies, ends[f.from], ends[f.to], f.protocol, f.port) {
					t.Errorf("%s -> %s:%d is allowed; it should not be", f.from, f.to, f.port)
				}
			}
			// Without the default deny, everything above would pass trivially.
			var deny bool
			for _, p := range policies {
				deny = deny || (len(p.Spec.PodSelector.MatchLabels) == 0 && len(p.Spec.Ingress) == 0 && len(p.Spec.Egress) == 0 && len(p.Spec.PolicyTypes) == 2)
			}
			if !deny {
				t.Error("no default-deny policy (empty podSelector, both policy types, no rules)")
			}
		})
	}
}

func flows(from []string, to string, ports ...int32) []flow {
	var out []flow
	for _, f := range from {
		for _, p := range ports {
			out = append(out, flow{f, to, corev1.ProtocolTCP, p})
		}
	}
	return out
}
