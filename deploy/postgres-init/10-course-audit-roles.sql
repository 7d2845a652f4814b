-- The database roles of docs/operations.md#database-roles, for compose.yaml only.
-- The postgres image runs this once, when the postgres-data volume is first initialised, as
-- the server's superuser (POSTGRES_USER) in the course_audit database (POSTGRES_DB).
-- The passwords are local development ones, the same as in compose.yaml's URLs: never reuse
-- them on a server reachable by anyone else.

-- The owner: `migrate` (and one-off commands) connect as it. Not a superuser: the partition
-- functions of migration 0004 run with their owner's rights.
CREATE ROLE course_audit LOGIN PASSWORD 'course_audit';
DO $owner$
BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO course_audit', current_database());
END
$owner$;

-- The group roles. Migration 0004 creates them only when they are missing, which the owner
-- could not do without CREATEROLE; created here, it finds them and grants them their rights.
CREATE ROLE course_audit_writer NOLOGIN;
CREATE ROLE course_audit_reader NOLOGIN;

-- The logins: `consume` as a member of the writer, `serve` as a member of the reader.
CREATE ROLE course_audit_consumer LOGIN PASSWORD 'course_audit_consumer' IN ROLE course_audit_writer;
CREATE ROLE course_audit_api LOGIN PASSWORD 'course_audit_api' IN ROLE course_audit_reader;
