"""Process wiring: roles, the base HTTP app (health, metrics), logging."""
