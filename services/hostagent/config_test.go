package hostagent

import (
	"strings"
	"testing"

	"github.com/podvisor/podvisor/shared/config"
)

func TestConfigsFrom(t *testing.T) {
	for _, tc := range []struct {
		name, hosts, dir string
		want             []string // hosts, or nil with wantErr
		wantErr          string
	}{
		{"one host", "esx-1", "/run/pv", []string{"esx-1"}, ""},
		{"several hosts", "esx-1, esx-2,esx-3", "/run/pv", []string{"esx-1", "esx-2", "esx-3"}, ""},
		{"no host", "", "/run/pv", nil, EnvHost},
		{"no channel dir", "esx-1", "", nil, EnvChannelDir},
		{"empty entry", "esx-1,,esx-2", "/run/pv", nil, "empty host name"},
		{"twice", "esx-1,esx-1", "/run/pv", nil, "listed twice"},
		{"bad name", "esx 1", "/run/pv", nil, "must not contain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfgs, err := ConfigsFrom(config.Map(map[string]string{EnvHost: tc.hosts, EnvChannelDir: tc.dir}))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range cfgs {
				if c.ChannelDir != tc.dir || c.Workers != DefaultConfig().Workers {
					t.Errorf("config %+v: want the channel dir and the defaults", c)
				}
				got = append(got, c.Host)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("hosts %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConcentratorConfigFrom(t *testing.T) {
	for _, tc := range []struct {
		name, listen, key, wantListen, wantErr string
		wantProxy                              bool
	}{
		{"none", "", "", "", "", false},
		{"tcp url", "tcp://0.0.0.0:7041", "/etc/podvisor/channel.key", "0.0.0.0:7041", "", false},
		{"the ports' proxy", "telnet://0.0.0.0:7041", "/k", "0.0.0.0:7041", "", true},
		{"host and port", "127.0.0.1:7041", "/k", "127.0.0.1:7041", "", false},
		{"no port", "concentrator.example", "/k", "", EnvConcentrator, false},
		{"proxy without a port", "telnet://concentrator.example", "/k", "", EnvConcentrator, false},
		{"no key file", ":7041", "", "", EnvChannelKeyFile, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ConcentratorConfigFrom(config.Map(map[string]string{EnvConcentrator: tc.listen, EnvChannelKeyFile: tc.key}))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || c.Listen != tc.wantListen || c.Proxy != tc.wantProxy {
				t.Fatalf("config %+v, %v; want listen %q, proxy %v", c, err, tc.wantListen, tc.wantProxy)
			}
		})
	}
}
