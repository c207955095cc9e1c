"""The only code that talks to PostgreSQL: the batching writer, its sink, schema and log."""
