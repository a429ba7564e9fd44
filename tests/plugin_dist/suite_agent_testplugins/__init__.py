"""Plugins for the suite-agent tests: a recorder whose options make it misbehave, a plugin that
cannot be imported, and the seed's three example plugins."""
