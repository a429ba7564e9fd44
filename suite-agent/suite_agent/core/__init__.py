"""The owner thread and everything only it touches: the loop, its typed inbox, plan(), services
and instances, restart decisions, dependencies, reply waiters, timers and snapshots."""
