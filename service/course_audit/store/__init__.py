"""The PostgreSQL store (asyncpg): migrations, partitions, the write path, the API's reads,
dead letters and tokens. Import from the module that does the job (`store.writer`, ...)."""
