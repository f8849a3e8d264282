package vsphere_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/shared/vsphere"
)

func TestConfigFromEnv(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "password")
	if err := os.WriteFile(secret, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    vsphere.Config
		wantErr string
	}{
		{
			name: "credentials in the URL",
			env:  map[string]string{"GOVC_URL": "https://admin:pw@vc.example.com/sdk", "GOVC_INSECURE": "1", "GOVC_DATACENTER": "DC0"},
			want: vsphere.Config{URL: "https://vc.example.com/sdk", Username: "admin", Password: "pw", Insecure: true, Datacenter: "DC0"},
		},
		{
			name: "govc short form and overrides",
			env:  map[string]string{"GOVC_URL": "u:p@vc.example.com", "GOVC_USERNAME": "svc", "GOVC_PASSWORD": "s3", "GOVC_INSECURE": "false"},
			want: vsphere.Config{URL: "https://vc.example.com/sdk", Username: "svc", Password: "s3"},
		},
		{
			name: "password from a mounted secret",
			env:  map[string]string{"GOVC_URL": "http://127.0.0.1:8989/sdk", "GOVC_USERNAME": "podvisor", "GOVC_PASSWORD_FILE": secret, "GOVC_INSECURE": "true"},
			want: vsphere.Config{URL: "http://127.0.0.1:8989/sdk", Username: "podvisor", Password: "from-file", Insecure: true},
		},
		{
			name:    "missing URL",
			env:     map[string]string{"GOVC_USERNAME": "u", "GOVC_PASSWORD": "p"},
			wantErr: "GOVC_URL: required",
		},
		{
			name:    "missing password",
			env:     map[string]string{"GOVC_URL": "vc.example.com", "GOVC_USERNAME": "u"},
			wantErr: "Password: required",
		},
		{
			name:    "both forms of one variable",
			env:     map[string]string{"GOVC_URL": "vc.example.com", "GOVC_USERNAME": "u", "GOVC_PASSWORD": "p", "GOVC_PASSWORD_FILE": secret},
			wantErr: "GOVC_PASSWORD and GOVC_PASSWORD_FILE are both set",
		},
		{
			name:    "unreadable secret file",
			env:     map[string]string{"GOVC_URL": "vc.example.com", "GOVC_USERNAME": "u", "GOVC_PASSWORD_FILE": filepath.Join(dir, "absent")},
			wantErr: "GOVC_PASSWORD_FILE",
		},
		{
			name:    "bad insecure flag",
			env:     map[string]string{"GOVC_URL": "u:p@vc.example.com", "GOVC_INSECURE": "yes please"},
			wantErr: "GOVC_INSECURE",
		},
		{
			name:    "bad scheme",
			env:     map[string]string{"GOVC_URL": "ftp://u:p@vc.example.com/sdk"},
			wantErr: "scheme",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"GOVC_URL", "GOVC_URL_FILE", "GOVC_USERNAME", "GOVC_USERNAME_FILE", "GOVC_PASSWORD", "GOVC_PASSWORD_FILE", "GOVC_INSECURE", "GOVC_DATACENTER"} {
				t.Setenv(k, tc.env[k])
			}
			got, err := vsphere.ConfigFromEnv()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("config = %+v, want %+v", got, tc.want)
			}
			if strings.Contains(got.URL, got.Password) {
				t.Errorf("URL %q carries the password", got.URL)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  vsphere.Config
		want string // "" = valid
	}{
		{"credentials in fields", vsphere.Config{URL: "https://vc/sdk", Username: "u", Password: "p"}, ""},
		{"credentials in URL", vsphere.Config{URL: "http://u:p@127.0.0.1:1/sdk"}, ""},
		{"no URL", vsphere.Config{Username: "u", Password: "p"}, "URL: required"},
		{"no user", vsphere.Config{URL: "vc", Password: "p"}, "Username: required"},
		{"negative keepalive", vsphere.Config{URL: "u:p@vc", KeepAlive: -1}, "KeepAlive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}
