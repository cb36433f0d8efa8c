"""kiln: immutable infrastructure with continuous delivery built in."""

__version__ = "0.1.0"
