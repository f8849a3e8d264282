package bus

import (
	"fmt"
	"slices"
	"time"

	"github.com/podvisor/podvisor/events"
)

// Identity is one NATS user of podvisor and what it may do. The table below
// is data: the subjects a service may publish come from the event catalog
// (events.SubjectsPublishedBy), and the rest from what the service reads,
// writes and answers. Adding a service is one entry here (and its types'
// publishers in events).
type Identity struct {
	// Name is the service name: its CloudEvent source is podvisor/<Name>,
	// its events publisher name is Name and its dead letters go to
	// pv.dlq.<Name>.
	Name string
	// Consumes lists the streams it reads with consumers (its dead letters
	// need ADVISORIES, which every consumer reads, so it is implied).
	Consumes []string
	// Owns lists the KV buckets it writes (DESIGN "Ownership": one writer
	// per bucket). It may read them too.
	Owns []string
	// Reads lists the KV buckets of others it reads as read models.
	Reads []string
	// Serves lists the request/reply subjects it answers.
	Serves []string
	// Asks lists the request/reply subjects it calls.
	Asks []string
	// StreamsAnswers lets it send many answers to one request (a pod's log
	// or exec session streams numbered messages to the reply subject) for
	// up to StreamedAnswerLifetime; others answer once.
	StreamsAnswers bool
	// Client marks the identity of people and other systems: it may
	// publish only requests (events.IsRequest), read every stream and
	// bucket and ask every query; it consumes nothing durably.
	Client bool
	// Admin may do anything: `podvisor up` declares the topology with it,
	// and an operator repairs with it.
	Admin bool
	// Guest marks a guest cluster's node: it may ask its Asks and nothing
	// else (no stream, no bucket, no event).
	Guest bool
	// Watches lists the streams a ReadOnly identity follows.
	Watches []string
	// ReadOnly marks an identity that publishes nothing (the dashboard): it
	// follows Watches and the buckets of Reads with ordered consumers that
	// push to its inbox, and gets single KV values. It may not pull, ack
	// or delete consumers, so it can take no delivery from a service, and
	// may not read any other stream or bucket.
	ReadOnly bool
}

// GuestClusterIdentity is the identity of guest cluster namespace/name's
// node: it asks its own guest cluster's queries, and sends keep-alives,
// stdin and cancels on the control subjects of the logs and exec answers it
// receives (their ids are random and reach only the asker's inbox).
func GuestClusterIdentity(namespace, name string) Identity {
	return Identity{
		Name:  "gc-" + namespace + "-" + name,
		Guest: true,
		Asks:  []string{events.SubjectGuestClusterQueries(namespace, name), "pv.query.pod.control.>"},
	}
}

// Identity names besides the services'.
const (
	IdentityClient    = "client"
	IdentityAdmin     = "admin"
	IdentityDashboard = "dashboard"
)

// ClientHiddenBuckets are the buckets a client may not read although it
// reads every other stream and bucket: their values hand out more than a
// client may do (a guest cluster's admin kubeconfig).
var ClientHiddenBuckets = []string{events.BucketGuestClusterKubeconfigs}

// QuerySubjects matches every request/reply query (pv.query.<domain>.<what>)
// and the simulator's controls (pv.sim.>, only where a simulator runs).
const (
	QuerySubjects = "pv.query.>"
	SimSubjects   = "pv.sim.>"
)

// Identities is the permission table of every identity podvisor mints.
func Identities() []Identity {
	return []Identity{
		// The provisioner releases the keys of encrypted ephemeral disks
		// to the pod VMs it created, asked by their host agents only.
		{Name: events.PublisherProvisioner, Consumes: []string{events.StreamPods, events.StreamMigrations, events.StreamVMs},
			Owns: []string{BucketPods, BucketVMs, BucketVMClasses, BucketVMImages, BucketPodTemplates}, Reads: []string{BucketMigrations},
			Serves: []string{events.SubjectDiskKeyRelease}},
		{Name: events.PublisherScheduler, Consumes: []string{events.StreamPods, events.StreamNetworks, events.StreamMigrations, events.StreamHosts, events.StreamVMs},
			Owns: []string{BucketHosts, BucketLedger}, Reads: []string{BucketPods, BucketNetHosts, BucketVMs, BucketMigrations},
			Asks: []string{events.SubjectQueryNetworkAvailable}},
		{Name: events.PublisherImageCache, Consumes: []string{events.StreamPods}, Reads: []string{BucketPods}},
		{Name: events.PublisherNetConfig, Consumes: []string{events.StreamPods, events.StreamNetworks, events.StreamMigrations, events.StreamHosts, events.StreamVMs},
			Owns: []string{BucketNetworks, BucketNetHosts, BucketIPAM, BucketNetServices, BucketNetData, events.BucketNetMgmt, events.BucketNetRealized}, Reads: []string{BucketPods, BucketVMs},
			Serves: []string{events.SubjectQueryNetworkAvailable}},
		{Name: events.PublisherMigration, Consumes: []string{events.StreamMigrations, events.StreamHosts, events.StreamNetworks, events.StreamVMs},
			Owns: []string{BucketMigrations, events.BucketDrains}, Reads: []string{BucketPods, BucketHosts, BucketNetHosts, BucketVMs}},
		// The host agent reports what runs in its pod VMs, answers logs
		// and exec of its pods by request/reply, applies its host's final
		// network state, serves the network services, delivers the
		// pass-through data of its host's networks, and asks the
		// provisioner for the disk keys of its encrypted pod VMs; one
		// serving every host learns them from the hosts bucket, and its
		// concentrator routes a template's serial line to the agent of
		// the template's host by the template's record.
		{Name: events.PublisherHostAgent, Consumes: []string{events.StreamPods, events.StreamNetworks},
			Reads: []string{BucketPods, BucketNetworks, BucketNetHosts, BucketIPAM, BucketNetServices, BucketNetData, events.BucketHosts,
				BucketPodTemplates},
			Serves: []string{"pv.query.pod.>"}, Asks: []string{events.SubjectDiskKeyRelease}, StreamsAnswers: true},
		// The guest cluster controller declares its clusters' VMs (as a
		// client would), runs their compatibility checks, asks for the
		// pods of guest clusters, answers their nodes' queries and hands
		// their logs and exec requests to the host agents.
		{Name: events.PublisherGuestCluster, Consumes: []string{events.StreamGuestClusters, events.StreamVMs, events.StreamPods},
			Owns: []string{events.BucketGuestClusters, events.BucketGuestClusterKubeconfigs}, Reads: []string{BucketPods, BucketVMs, BucketVMClasses, BucketVMImages},
			Serves: []string{events.SubjectGuestClusterQueryAll}, Asks: []string{events.SubjectQueryPodLogs + ".*", events.SubjectQueryPodExec + ".*"}},
		// The dashboard shows these buckets and a feed of these streams,
		// and nothing it may read is a secret.
		{Name: IdentityDashboard, ReadOnly: true,
			Watches: []string{events.StreamPods, events.StreamImages, events.StreamNetworks, events.StreamMigrations, events.StreamHosts,
				events.StreamVMs, events.StreamGuestClusters},
			Reads: []string{BucketPods, BucketHosts, BucketNetworks, BucketMigrations}},
		{Name: IdentityClient, Client: true},
		{Name: IdentityAdmin, Admin: true},
	}
}

// LookupIdentity returns the table entry of name.
func LookupIdentity(name string) (Identity, error) {
	for _, id := range Identities() {
		if id.Name == name {
			return id, nil
		}
	}
	return Identity{}, fmt.Errorf("bus: no identity %q in the permission table", name)
}

func kvStream(bucket string) string { return "KV_" + bucket }

// readAPI is what reading stream s takes: its info, consumers on it, their
// next messages, acks and flow control, and single-message gets (dead
// letters, KV Get).
func readAPI(s string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + s,
		"$JS.API.STREAM.MSG.GET." + s,
		"$JS.API.DIRECT.GET." + s,
		"$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.CONSUMER.CREATE." + s,
		"$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + s + ".*",
		"$JS.API.CONSUMER.INFO." + s + ".*",
		"$JS.API.CONSUMER.DELETE." + s + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + s + ".*",
		"$JS.ACK." + s + ".>",
		"$JS.FC." + s + ".>",
	}
}

// watchAPI is what following stream s with an ordered push consumer takes:
// its info, creating an ephemeral consumer that delivers to the inbox, and
// answering its flow control. Without the MSG.NEXT, ACK and DELETE subjects
// of readAPI, a watcher cannot take a delivery from another's consumer nor
// remove it. (A consumer create naming an existing consumer updates it: NATS
// subject permissions cannot tell the two apart; docs/security.md.)
func watchAPI(s string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + s,
		"$JS.API.CONSUMER.CREATE." + s,
		"$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.FC." + s + ".>",
	}
}

// accountAPI is what every JetStream user asks of the account as a whole.
var accountAPI = []string{"$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"}

// Permissions are the publish and subscribe allow lists of an identity;
// an empty list for an admin means "everything".
type Permissions struct {
	Publish, Subscribe []string
	// PublishDeny are refused even where Publish allows them (deny wins
	// in NATS): the read API of ClientHiddenBuckets for a client.
	PublishDeny []string
	// Respond lets it answer requests on the reply subjects it received
	// (the server allows one answer per request).
	Respond bool
	// StreamResponses lifts the one-answer limit (for StreamedAnswerLifetime).
	StreamResponses bool
}

// StreamedAnswerLifetime bounds how long an identity that streams answers
// may keep answering one request: a `podvisor logs -f` or exec session
// longer than this loses its answers and has to be started again.
const StreamedAnswerLifetime = 24 * time.Hour

// Permissions derives the identity's NATS permissions.
func (id Identity) Permissions() Permissions {
	if id.Admin {
		return Permissions{Publish: []string{">"}, Subscribe: []string{">"}, Respond: true}
	}
	var pub []string
	add := func(s ...string) {
		for _, x := range s {
			if !slices.Contains(pub, x) {
				pub = append(pub, x)
			}
		}
	}
	if id.Guest {
		return Permissions{Publish: slices.Clone(id.Asks), Subscribe: []string{"_INBOX.>"}}
	}
	if id.ReadOnly {
		for _, st := range id.Watches {
			add(watchAPI(st)...)
		}
		for _, b := range id.Reads {
			add(watchAPI(kvStream(b))...)
			add("$JS.API.DIRECT.GET."+kvStream(b), "$JS.API.DIRECT.GET."+kvStream(b)+".>")
		}
		return Permissions{Publish: pub, Subscribe: []string{"_INBOX.>"}}
	}
	add(accountAPI...)
	if id.Client {
		add(events.SubjectsPublishedBy(events.PublisherClient)...)
		// Every stream and bucket: "*" stands for any stream name.
		add(readAPI("*")...)
		add(QuerySubjects, SimSubjects)
		var deny []string
		for _, b := range ClientHiddenBuckets {
			deny = append(deny, readAPI(kvStream(b))...)
			deny = append(deny, "$KV."+b+".>")
		}
		return Permissions{Publish: pub, Subscribe: []string{"_INBOX.>"}, PublishDeny: deny}
	}
	add(events.SubjectsPublishedBy(id.Name)...)
	add(DLQSubjectPrefix + id.Name)
	for _, s := range append(slices.Clone(id.Consumes), StreamAdvisories) {
		add(readAPI(s)...)
	}
	for _, b := range id.Owns {
		// Its own bucket: write keys, and (re)declare the bucket, which
		// some services do at start for buckets only they use.
		add(readAPI(kvStream(b))...)
		add("$KV."+b+".>", "$JS.API.STREAM.CREATE."+kvStream(b), "$JS.API.STREAM.UPDATE."+kvStream(b))
	}
	for _, b := range id.Reads {
		add(readAPI(kvStream(b))...)
	}
	add(id.Asks...)
	sub := append([]string{"_INBOX.>"}, id.Serves...)
	return Permissions{Publish: pub, Subscribe: sub, Respond: len(id.Serves) > 0, StreamResponses: id.StreamsAnswers}
}
