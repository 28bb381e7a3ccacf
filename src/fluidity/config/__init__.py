"""Configuration: the schema (frozen dataclasses) and the loader (YAML, env, flags)."""
