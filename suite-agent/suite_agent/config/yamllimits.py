"""How much one conf.d file may hold, for both ways of reading it (yamlfast, yamlpos)."""

MAX_DEPTH = 64  # no conf.d file needs more; protects the recursion of the walks
# Keys and values in one file, before and after aliases are expanded: a thousand services take
# a few tens of thousands. Bounds the time and memory a file costs, alias bombs included.
MAX_NODES = 100_000
