//go:build race

package provisioner

// raceDetector is true when the tests run with -race.
const raceDetector = true
