"""Service output: the pipe-reading thread, line splitting, rotated log files, recent lines."""
