"""The network, its config and its file: build, save, load, check, describe."""
