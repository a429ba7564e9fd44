"""Health probes: the scheduling thread with its thresholds, and the http/tcp/exec checks."""
