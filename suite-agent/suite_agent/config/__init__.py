"""conf.d/: models, loading with file:line errors, and schema export."""
