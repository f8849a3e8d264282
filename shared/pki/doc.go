// Package pki is the small certificate authority of a podvisor
// installation: `podvisor up` makes one CA in its state dir and a server
// certificate for every listener it starts (NATS, Redis, the status page,
// the simulated vCenter, the registry), so that every client verifies whom
// it talks to with nothing but the CA file the env file names.
//
//	ca, err := pki.LoadOrCreateCA(filepath.Join(stateDir, "tls"))
//	cert, key, err := ca.Issue("nats", "127.0.0.1", "localhost")
//	srvTLS, err := ca.ServerTLS("nats", "127.0.0.1", "localhost")
//	clientTLS := ca.ClientTLS()
//
// Keys are ECDSA P-256; the CA lives ten years, server certificates one
// year and are issued again when missing, near expiry or when the host
// names they must carry change. Key files are mode 0600.
package pki
