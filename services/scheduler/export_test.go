package scheduler

// HostCommitSpacing is hostCommitSpacing, for the test of a burst's writes.
const HostCommitSpacing = hostCommitSpacing
