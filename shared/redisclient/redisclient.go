// Package redisclient turns a Redis URL and CA file into go-redis client
// options: what every Redis client of podvisor (the image cache, the
// scheduler, the dashboard, the CLI) connects with. It is apart from
// package redisserver, which starts servers, so that a service links the
// client alone.
package redisclient

import (
	"crypto/x509"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/shared/redact"
)

// Options parses a redis:// or rediss:// URL and, for TLS, trusts the CA
// in caFile (the system's roots when empty). go-redis's defaults bound
// every call: 5 s to dial, 3 s to read or write. A URL that does not parse
// is reported without its password.
func Options(rawURL, caFile string) (*redis.Options, error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %s", redact.String(err.Error()))
	}
	if caFile != "" && opts.TLSConfig != nil {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("redis CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis CA %s: no certificate", caFile)
		}
		opts.TLSConfig.RootCAs = pool
	}
	return opts, nil
}
