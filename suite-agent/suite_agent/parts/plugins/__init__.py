"""The plugins part: runs each configured plugin in a process of its own and feeds it the
agent's events. Imported only when conf.d has a `plugins` section."""
