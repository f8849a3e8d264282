package config_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/shared/config"
)

func TestReaderReadsAndReportsEveryBadValue(t *testing.T) {
	src := config.Layered(
		config.Map(map[string]string{"N": " 4 ", "D": "2s", "BAD_N": "four", "BAD_D": "soon", "L": "a, ,b", "EMPTY": ""}),
		config.Map(map[string]string{"N": "9", "F": "1.5", "B": "true", "S": "x"}),
	)
	var (
		n, badN, empty = 1, 1, 7
		d, badD        = time.Second, time.Second
		f              float64
		b              bool
		s              string
		l              []string
	)
	r := config.Read(src)
	r.Int("N", &n)
	r.Int("BAD_N", &badN)
	r.Int("EMPTY", &empty)
	r.Duration("D", &d)
	r.Duration("BAD_D", &badD)
	r.Float("F", &f)
	r.Bool("B", &b)
	r.String("S", &s)
	r.List("L", &l)
	if n != 4 || d != 2*time.Second || f != 1.5 || !b || s != "x" || strings.Join(l, "|") != "a|b" || empty != 7 {
		t.Errorf("read n=%d d=%s f=%v b=%v s=%q l=%q empty=%d", n, d, f, b, s, l, empty)
	}
	if badN != 1 || badD != time.Second {
		t.Errorf("a bad value replaced the default: %d %s", badN, badD)
	}
	err := r.Err()
	if err == nil || !strings.Contains(err.Error(), `BAD_N="four": want a whole number`) || !strings.Contains(err.Error(), `BAD_D="soon": want a duration`) {
		t.Errorf("Err = %v, want both bad settings named", err)
	}
}

func TestStringOrNoneTakesAnEmptyValue(t *testing.T) {
	folder, unset := "podvisor", "kept"
	r := config.Read(config.Map(map[string]string{"FOLDER": " ", "OTHER": " x "}))
	r.StringOrNone("FOLDER", &folder)
	r.StringOrNone("UNSET", &unset)
	other := ""
	r.StringOrNone("OTHER", &other)
	if folder != "" || unset != "kept" || other != "x" {
		t.Errorf("folder %q unset %q other %q, want \"\", kept and x", folder, unset, other)
	}
}

func TestBytesReadsBinarySizes(t *testing.T) {
	budget, bad := int64(1), int64(7)
	r := config.Read(config.Map(map[string]string{"BUDGET": "20Gi", "BAD": "lots"}))
	r.Bytes("BUDGET", &budget)
	r.Bytes("BAD", &bad)
	if budget != 20<<30 || bad != 7 {
		t.Errorf("budget %d bad %d, want 20Gi and the default kept", budget, bad)
	}
	if err := r.Err(); err == nil || err.Error() != `BAD: "lots" is not a size such as 20Gi or 1048576` {
		t.Errorf("Err = %v", err)
	}
}

func TestEnvIsTheProcessEnvironment(t *testing.T) {
	t.Setenv("PODVISOR_CONFIG_TEST", "yes")
	if v, ok := config.Env()("PODVISOR_CONFIG_TEST"); !ok || v != "yes" {
		t.Errorf("Env() = %q %v", v, ok)
	}
	if err := config.Read(nil).Err(); err != nil {
		t.Error(err)
	}
}

func TestChecksNameEveryFieldInOneForm(t *testing.T) {
	var c config.Checks
	c.Must(3 >= 1, "Workers", 3, "be at least 1")
	c.Must(false, "AckWait", 20*time.Millisecond, "be at least 1s")
	c.Must(false, "FolderRoot", "a*b", "not contain wildcards")
	c.Required(false, "GuestID", "for example otherLinux64Guest")
	c.Required(true, "Dir", "never said")
	err := c.Err()
	want := "AckWait 20ms: must be at least 1s\nFolderRoot \"a*b\": must not contain wildcards\nGuestID: required (for example otherLinux64Guest)"
	if err == nil || err.Error() != want {
		t.Errorf("Err() = %v, want %q", err, want)
	}
	var none config.Checks
	none.Must(true, "Workers", 1, "be at least 1")
	if err := none.Err(); err != nil {
		t.Errorf("Err() with no problem = %v", err)
	}
}

// settings is a Config as a service declares one, for Load.
type settings struct {
	Workers int
	Size    int64
}

func (s settings) Validate() error {
	var c config.Checks
	c.Must(s.Workers >= 1, "Workers", s.Workers, "be at least 1")
	return c.Err()
}

func readSettings(r *config.Reader, s *settings) {
	r.Int("WORKERS", &s.Workers)
	r.Parse("SIZE", func(v string) error {
		if v != "big" {
			return fmt.Errorf("%q is not big", v)
		}
		s.Size = 1 << 30
		return nil
	})
}

func TestLoadReadsOverDefaultsThenValidates(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    settings
		wantErr string
	}{
		{name: "defaults", env: nil, want: settings{Workers: 2}},
		{name: "overrides", env: map[string]string{"WORKERS": "5", "SIZE": "big"}, want: settings{Workers: 5, Size: 1 << 30}},
		{name: "bad values all named, not validated", env: map[string]string{"WORKERS": "0x", "SIZE": "small"},
			want: settings{Workers: 2}, wantErr: "WORKERS=\"0x\": want a whole number\nSIZE: \"small\" is not big"},
		{name: "read, then invalid", env: map[string]string{"WORKERS": "0"}, want: settings{Workers: 0}, wantErr: "Workers 0 (WORKERS): must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Load(config.Map(tt.env), settings{Workers: 2}, readSettings)
			if got != tt.want {
				t.Errorf("Load = %+v, want %+v", got, tt.want)
			}
			if (err == nil) != (tt.wantErr == "") || (err != nil && err.Error() != tt.wantErr) {
				t.Errorf("Load error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// nested is a Config with a nested struct and a list, as the migration and
// image-cache services have.
type nested struct {
	Name   string
	Limits struct{ PerHost, PerCluster int }
	Dirs   []string
	Memo   string // never read from a setting
}

func (n nested) Validate() error {
	var c config.Checks
	c.Must(n.Limits.PerHost <= n.Limits.PerCluster, "Limits.PerHost", n.Limits.PerHost, "not exceed Limits.PerCluster")
	c.Must(len(n.Dirs) < 2 || n.Dirs[1] != n.Dirs[0], "Dirs[1]", n.Dirs[1], "not be listed twice")
	c.Required(n.Memo != "", "Memo", "a note")
	c.Add(fmt.Errorf("Name %q: taken", n.Name))
	if err := c.Err(); err != nil {
		// Wrapped as some services do: the wrapper's text is fixed when
		// it is made, and the settings must be named in it all the same.
		return fmt.Errorf("nested config: %w", err)
	}
	return nil
}

func TestLoadNamesTheSettingOfAFieldValidateRefuses(t *testing.T) {
	env := map[string]string{"NAME": "x", "PER_HOST": "6", "PER_CLUSTER": "5", "DIRS": "a,a"}
	_, err := config.Load(config.Map(env), nested{}, func(r *config.Reader, n *nested) {
		r.String("NAME", &n.Name)
		r.Int("PER_HOST", &n.Limits.PerHost)
		r.Int("PER_CLUSTER", &n.Limits.PerCluster)
		r.List("DIRS", &n.Dirs)
	})
	want := "nested config: Limits.PerHost 6 (PER_HOST): must not exceed Limits.PerCluster\n" +
		"Dirs[1] \"a\" (DIRS): must not be listed twice\n" +
		"Memo: required (a note)\n" +
		"Name \"x\": taken"
	if err == nil || err.Error() != want {
		t.Errorf("Load error =\n%v\nwant\n%s", err, want)
	}
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Setting != "PER_HOST" || fe.Field != "Limits.PerHost" {
		t.Errorf("first FieldError = %+v, want Limits.PerHost set by PER_HOST", fe)
	}
}
