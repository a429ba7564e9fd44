"""suite-agent: a declarative process supervisor."""

__version__ = "0.1.0"
