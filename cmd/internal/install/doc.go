// Package install prepares a vCenter for podvisor (`podvisor install`):
// it checks the prerequisites (a vCenter of a supported version, a
// distributed switch, a datastore with room, the account's privileges) and
// reports everything missing at once, then creates the podvisor folder,
// uploads the pod VM boot image (make podvm-image) to the datastore and
// creates the pod VM template from it.
//
// Everything it makes has a deterministic name, and the boot image's
// directory and the template are named after the image's digest, so a second
// run finds each part done and changes nothing, and a new image is installed
// beside the old one.
package install
