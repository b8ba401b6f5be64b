"""One module per CLI command; each defines NAME, a docstring (the help text) and `command`."""
