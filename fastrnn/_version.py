__version__ = "0.1.0"  # the one place of the version (pyproject.toml repeats it for the build)
