package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Per-identity limits. A service holds a few subscriptions per consumer and
// KV watch; a client a few per command; neither needs thousands, and a
// runaway one is stopped by the server rather than by memory.
const (
	ServiceMaxSubscriptions = 1000
	ClientMaxSubscriptions  = 256
	// ClientMaxPayload bounds what a client may publish in one message,
	// headers included: an event (events.MaxEventSize of data) and its
	// CloudEvent headers fit; a megabyte does not.
	ClientMaxPayload = MaxMessageSize
	// AccountMaxConnections bounds the connections of the whole podvisor
	// account (JWT user claims carry no per-user connection limit).
	AccountMaxConnections = 1024
)

// AccountName names the NATS account every podvisor identity belongs to.
const AccountName = "podvisor"

// Authority mints the NATS identities of one podvisor installation. It is
// an operator with two accounts: SYS (the server's own) and podvisor, whose
// users are the identities of the permission table, each signed with its
// permissions and limits into a .creds file (JWT and seed) that nats.go and
// the nats CLI read. The keys live in a directory (mode 0700, files 0600),
// so a restarted server accepts the creds files already handed out.
type Authority struct {
	dir                          string
	operator, account, system    nkeys.KeyPair
	operatorClaims               *jwt.OperatorClaims
	accountPub, systemPub        string
	accountJWT, systemAccountJWT string

	mu sync.Mutex
	// revoked are the user keys whose JWTs the account no longer accepts
	// (user public key -> the time of the revocation, Unix seconds: JWTs
	// issued until then are refused), kept in revoked.json.
	revoked jwt.RevocationList
}

// encodeAccount signs the podvisor account's JWT with its limits and the
// revocations.
func (a *Authority) encodeAccount() error {
	ac := jwt.NewAccountClaims(a.accountPub)
	ac.Name = AccountName
	ac.Limits.Conn = AccountMaxConnections
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit,
		// Every stream and bucket must say how many bytes it may hold:
		// one client cannot fill the disk through a stream without a limit.
		MaxBytesRequired: true,
	}
	if len(a.revoked) > 0 {
		ac.Revocations = maps.Clone(a.revoked)
	}
	tok, err := ac.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("bus: authority: account: %w", err)
	}
	a.accountJWT = tok
	return nil
}

func (a *Authority) revocationsPath() string { return filepath.Join(a.dir, "revoked.json") }

func readRevocations(path string) (jwt.RevocationList, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return jwt.RevocationList{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bus: authority: %w", err)
	}
	var l jwt.RevocationList
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("bus: authority: %s: %w", path, err)
	}
	if l == nil {
		l = jwt.RevocationList{}
	}
	return l, nil
}

// LoadAuthority reads the keys in dir, creating what is missing.
func LoadAuthority(dir string) (*Authority, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bus: authority: %w", err)
	}
	a := &Authority{dir: dir}
	var err error
	if a.operator, err = loadSeed(filepath.Join(dir, "operator.nk"), nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if a.account, err = loadSeed(filepath.Join(dir, "account.nk"), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if a.system, err = loadSeed(filepath.Join(dir, "system.nk"), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	opub, _ := a.operator.PublicKey()
	a.accountPub, _ = a.account.PublicKey()
	a.systemPub, _ = a.system.PublicKey()

	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "podvisor"
	oc.SystemAccount = a.systemPub
	otok, err := oc.Encode(a.operator)
	if err != nil {
		return nil, fmt.Errorf("bus: authority: operator: %w", err)
	}
	if a.operatorClaims, err = jwt.DecodeOperatorClaims(otok); err != nil {
		return nil, fmt.Errorf("bus: authority: operator: %w", err)
	}

	if a.revoked, err = readRevocations(a.revocationsPath()); err != nil {
		return nil, err
	}
	if err := a.encodeAccount(); err != nil {
		return nil, err
	}
	sc := jwt.NewAccountClaims(a.systemPub)
	sc.Name = "SYS"
	if a.systemAccountJWT, err = sc.Encode(a.operator); err != nil {
		return nil, fmt.Errorf("bus: authority: system account: %w", err)
	}
	return a, nil
}

// loadSeed reads an nkey seed file or creates one.
func loadSeed(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	if b, err := os.ReadFile(path); err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
		if err != nil {
			return nil, fmt.Errorf("bus: authority: %s: %w", path, err)
		}
		return kp, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bus: authority: %w", err)
	}
	kp, err := create()
	if err != nil {
		return nil, fmt.Errorf("bus: authority: %w", err)
	}
	seed, _ := kp.Seed()
	if err := writeFileAtomic(path, append(seed, '\n')); err != nil {
		return nil, fmt.Errorf("bus: authority: %w", err)
	}
	return kp, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CredsPath is where Creds writes the creds file of an identity.
func (a *Authority) CredsPath(name string) string { return filepath.Join(a.dir, name+".creds") }

// Creds writes the creds file of the identity called name (an entry of
// Identities) and returns its path. The user key is kept across calls so
// that a creds file already handed out stays valid; the JWT is signed again
// so that it carries the permissions of this build's table.
func (a *Authority) Creds(name string) (string, error) {
	id, err := LookupIdentity(name)
	if err != nil {
		return "", err
	}
	return a.mint(id)
}

func (a *Authority) mint(id Identity) (string, error) {
	path := a.CredsPath(id.Name)
	var user nkeys.KeyPair
	if b, err := os.ReadFile(path); err == nil {
		if user, err = jwt.ParseDecoratedNKey(b); err != nil {
			return "", fmt.Errorf("bus: creds %s: %w", path, err)
		}
	} else if user, err = nkeys.CreateUser(); err != nil {
		return "", fmt.Errorf("bus: creds %s: %w", id.Name, err)
	}
	upub, _ := user.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = id.Name
	uc.IssuerAccount = ""
	perms := id.Permissions()
	uc.Pub.Allow.Add(perms.Publish...)
	uc.Pub.Deny.Add(perms.PublishDeny...)
	uc.Sub.Allow.Add(perms.Subscribe...)
	if perms.Respond {
		// One answer within AnswerWindow of the request: Request never
		// waits longer, and Serve drops what its requester gave up on.
		uc.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: AnswerWindow}
		if perms.StreamResponses {
			// -1: no limit on the answers to one request (0 would mean
			// the server's default of one).
			uc.Resp = &jwt.ResponsePermission{MaxMsgs: -1, Expires: StreamedAnswerLifetime}
		}
	}
	switch {
	case id.Admin:
	case id.Client:
		uc.Limits.Subs = ClientMaxSubscriptions
		uc.Limits.Payload = ClientMaxPayload
	default:
		uc.Limits.Subs = ServiceMaxSubscriptions
	}
	tok, err := uc.Encode(a.account)
	if err != nil {
		return "", fmt.Errorf("bus: creds %s: %w", id.Name, err)
	}
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		return "", fmt.Errorf("bus: creds %s: %w", id.Name, err)
	}
	if err := writeFileAtomic(path, creds); err != nil {
		return "", fmt.Errorf("bus: creds %s: %w", id.Name, err)
	}
	return path, nil
}

// MintAs writes the creds file of a new identity called name with the
// permissions of the table's entry role (client, admin or a service): a
// second client for another person or system, a service's replica with its
// own key. It returns the file's path.
func (a *Authority) MintAs(name, role string) (string, error) {
	id, err := LookupIdentity(role)
	if err != nil {
		return "", err
	}
	if !validIdentityName.MatchString(name) {
		return "", fmt.Errorf("bus: identity name %q: want lowercase letters, digits and dashes", name)
	}
	id.Name = name
	return a.mint(id)
}

// MintGuest writes the creds file of a guest cluster's node identity
// (GuestClusterIdentity) and returns its path.
func (a *Authority) MintGuest(namespace, name string) (string, error) {
	id := GuestClusterIdentity(namespace, name)
	if !validIdentityName.MatchString(id.Name) {
		return "", fmt.Errorf("bus: identity name %q: want lowercase letters, digits and dashes", id.Name)
	}
	return a.mint(id)
}

// Forget removes the creds file of identity name. Its JWT stays valid
// until the account revokes it; the guest cluster controller calls it when a
// guest cluster is deleted, and the node that held it is gone by then.
func (a *Authority) Forget(name string) error {
	if err := os.Remove(a.CredsPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Revoke revokes the user key of identity name's creds file in the
// account: once the servers have the new account JWT (PushAccount; a server
// started from this authority later reads it from revoked.json), every
// connection made with that creds file is closed and new ones are refused,
// even with a copy of the file kept elsewhere. A name without a creds file
// (never minted, or already forgotten) has nothing to revoke. The guest
// cluster controller revokes a deleted guest cluster's identity before it
// forgets it.
func (a *Authority) Revoke(name string) error {
	uc, err := userClaims(a.CredsPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bus: revoke %s: %w", name, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, done := a.revoked[uc.Subject]; done {
		return nil
	}
	// The revocation covers JWTs issued up to now; a JWT re-signed for
	// the same key later (Creds keeps keys) would pass, but a revoked
	// identity's creds file is forgotten and a new one gets a new key.
	a.revoked[uc.Subject] = time.Now().Unix()
	data, err := json.MarshalIndent(a.revoked, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(a.revocationsPath(), data); err != nil {
		return fmt.Errorf("bus: revoke %s: %w", name, err)
	}
	return a.encodeAccount()
}

// Revoked reports whether the user key of a creds file is revoked.
func (a *Authority) Revoked(credsFile string) (bool, error) {
	uc, err := userClaims(credsFile)
	if err != nil {
		return false, fmt.Errorf("bus: creds: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.revoked[uc.Subject]
	return ok && uc.IssuedAt <= at, nil
}

// PushAccount sends the account's current JWT (its revocations included)
// to the NATS servers at c.URL as a claims update of the system account,
// and waits for a server to apply it: the running servers then drop the
// connections of revoked users. It connects as a short-lived system user
// this authority signs (c.CredsFile is ignored; c.CAFile verifies the
// server). In a cluster the update reaches every server through the system
// account.
func (a *Authority) PushAccount(ctx context.Context, c ConnConfig) error {
	user, err := nkeys.CreateUser()
	if err != nil {
		return fmt.Errorf("bus: push account: %w", err)
	}
	upub, _ := user.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "podvisor-authority"
	uc.Expires = time.Now().Add(5 * time.Minute).Unix()
	utok, err := uc.Encode(a.system)
	if err != nil {
		return fmt.Errorf("bus: push account: %w", err)
	}
	seed, _ := user.Seed()
	c.CredsFile = ""
	if c.Name == "" {
		c.Name = "podvisor-authority"
	}
	opts := append(c.Options(), nats.UserJWTAndSeed(utok, string(seed)))
	if deadline, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(deadline)))
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return fmt.Errorf("bus: push account: connect as the system account to %s: %w", c.URL, err)
	}
	defer nc.Close()
	a.mu.Lock()
	tok := a.accountJWT
	a.mu.Unlock()
	m, err := nc.RequestWithContext(ctx, fmt.Sprintf("$SYS.REQ.ACCOUNT.%s.CLAIMS.UPDATE", a.accountPub), []byte(tok))
	if err != nil {
		return fmt.Errorf("bus: push account: %w", err)
	}
	var resp struct {
		Data *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"data"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("bus: push account: answer %q: %w", m.Data, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("bus: push account: server refused the account update: %s (%d)", resp.Error.Description, resp.Error.Code)
	}
	return nil
}

var validIdentityName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// ServerConfig is the nats-server configuration that trusts this authority
// (operator, system account, and the accounts preloaded into the
// resolver): what a NATS server outside `podvisor up` includes, for example
// from a Kubernetes Secret.
//
// With jwtDir the resolver is a `full` one keeping account JWTs in that
// directory (on the server's own volume): an account update pushed later
// (PushAccount, with a revocation) is stored there and outlives a restart,
// and the preloaded JWTs, older, do not replace it (the server keeps the
// newer of the two). Without it the resolver is in memory: a revocation
// pushed to a running server lasts until it restarts with the preload.
func (a *Authority) ServerConfig(jwtDir string) (string, error) {
	otok, err := a.operatorClaims.Encode(a.operator)
	if err != nil {
		return "", err
	}
	resolver := "resolver: MEMORY"
	if jwtDir != "" {
		if strings.ContainsAny(jwtDir, "\"\n") {
			return "", fmt.Errorf("bus: server config: resolver directory %q: a quote or newline cannot be written in the configuration", jwtDir)
		}
		resolver = fmt.Sprintf(`resolver: {
  type: full
  dir: "%s"
  allow_delete: false
}`, jwtDir)
	}
	return fmt.Sprintf(`# podvisor NATS authority: include from nats.conf.
operator: %s
system_account: %s
max_control_line: %d
%s
resolver_preload: {
  %s: %s
  %s: %s
}
`, otok, a.systemPub, MaxControlLine, resolver, a.systemPub, a.systemAccountJWT, a.accountPub, a.accountJWT), nil
}

// MintAll writes the creds file of every identity of the table and
// returns their paths by name.
func (a *Authority) MintAll() (map[string]string, error) {
	out := map[string]string{}
	for _, id := range Identities() {
		p, err := a.mint(id)
		if err != nil {
			return nil, err
		}
		out[id.Name] = p
	}
	return out, nil
}

// MaxControlLine is the longest protocol line the server accepts. A user's
// JWT, with its permission lists, travels in the CONNECT line, and a
// service's lists (the JetStream API subjects of each stream it reads) pass
// the server's 4 KiB default; a NATS server for podvisor sets
// max_control_line to this.
const MaxControlLine = 16 << 10

// Trust is what a NATS server must trust to accept this authority's
// identities and no other: its operator, and the JWT of each account by
// its public key (podvisor's and the system account).
type Trust struct {
	Operator      *jwt.OperatorClaims
	Accounts      map[string]string
	SystemAccount string
}

// Trust returns what a server run in this process (package natsembed) is
// configured with; ServerConfig writes the same for a server of its own.
func (a *Authority) Trust() Trust {
	return Trust{
		Operator:      a.operatorClaims,
		Accounts:      map[string]string{a.accountPub: a.accountJWT, a.systemPub: a.systemAccountJWT},
		SystemAccount: a.systemPub,
	}
}

// CredsIdentity reads the identity name a creds file was minted for.
func CredsIdentity(path string) (string, error) {
	uc, err := userClaims(path)
	if err != nil {
		return "", fmt.Errorf("bus: creds: %w", err)
	}
	return uc.Name, nil
}

// userClaims reads the user JWT of a creds file.
func userClaims(path string) (*jwt.UserClaims, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return uc, nil
}
