"""jobplatform: Dramatiq job platform with a dedicated database-writer queue."""

__version__ = "0.1.0"
