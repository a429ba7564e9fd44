"""Processes: spawning in a process group, tracking all a service starts (cgroups, markers) and
the one reaper. This is the seam that tests fake and that a keeper process takes over."""
