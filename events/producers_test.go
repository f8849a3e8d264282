package events

import (
	"slices"
	"testing"
)

// TestEveryTypeHasAPublisher: a type added to the catalog without a
// publisher would be a subject no identity may publish.
func TestEveryTypeHasAPublisher(t *testing.T) {
	for _, k := range Kinds() {
		if len(Publishers(k.Type)) == 0 {
			t.Errorf("%s has no entry in publishers", k.Type)
		}
	}
	for ceType := range publishers {
		if _, ok := Lookup(ceType); !ok {
			t.Errorf("publishers names %s, which is not in the catalog", ceType)
		}
	}
}

func TestSubjectsPublishedBy(t *testing.T) {
	client := SubjectsPublishedBy(PublisherClient)
	for _, want := range []string{SubjectPodRequested, SubjectPodDeleteRequested, SubjectNetworkDeclared, SubjectMigrationCancelRequested, SubjectHostDrainRequested} {
		if !slices.Contains(client, want) {
			t.Errorf("client may not publish %s: %v", want, client)
		}
	}
	for _, fact := range []string{SubjectPodRunning, SubjectPodImagesReady, SubjectPodNetworkAttached, SubjectPodScheduled} {
		if slices.Contains(client, fact) {
			t.Errorf("client may publish the fact %s", fact)
		}
	}
	if got := SubjectsPublishedBy(PublisherImageCache); !slices.Equal(got, []string{SubjectImageEvicted, SubjectImagePulled, SubjectPodImagesFailed, SubjectPodImagesReady, SubjectPodImagesRetrying}) {
		t.Errorf("imagecache publishes %v", got)
	}
}

func TestSourceAllowed(t *testing.T) {
	tests := []struct {
		ceType, source string
		want           bool
	}{
		{TypePodRequested, "me", true},
		{TypePodRequested, "podvisor/cli", true},
		{TypePodImagesReady, "podvisor/imagecache", true},
		{TypePodImagesReady, "podvisor/cli", false},
		{TypePodImagesReady, "imagecache", false},
		{TypePodNetworkAttached, "podvisor/scheduler", false},
		{TypeMigrationRequested, "podvisor/migration", true},
		{"io.podvisor.unknown.v1", "podvisor/provisioner", false},
	}
	for _, tt := range tests {
		if got := SourceAllowed(tt.ceType, tt.source); got != tt.want {
			t.Errorf("SourceAllowed(%s, %s) = %v, want %v", tt.ceType, tt.source, got, tt.want)
		}
	}
}
