"""Optional parts (REST API, queue, plugins): imported, started and stopped only when conf.d
configures them, each in threads of its own."""
