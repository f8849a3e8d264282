//go:build race

package sim_test

// raceEnabled relaxes timing budgets: the race detector slows vcsim several times.
const raceEnabled = true
