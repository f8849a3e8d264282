package events

// BucketPodTemplates holds the provisioner's pod VM templates (the running
// VMs pod VMs are instant-cloned from), one record per template keyed by
// its name. Only the provisioner writes it.
const BucketPodTemplates = "pod-templates"

// PodTemplatePlacement is the part of a template's record that others
// read: its name and the host its VM runs on. The provisioner's record has
// more (its shape, state and VM); the host agents' concentrator reads this
// to hand a template's network serial port to the agent of its host, as it
// does a pod's by the pod's record.
type PodTemplatePlacement struct {
	Name  string `json:"name"`
	Shape struct {
		Host string `json:"host"`
	} `json:"shape"`
}
