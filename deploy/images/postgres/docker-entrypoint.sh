#!/bin/bash
# Entrypoint of course-audit-postgres (deploy/images/build.py): Debian's PostgreSQL, started
# the way the official postgres image starts it, for the parts course-audit uses.
#
#   POSTGRES_PASSWORD  required (the superuser's password; host connections use scram-sha-256)
#   POSTGRES_USER      the superuser (default postgres)
#   POSTGRES_DB        a database created on first start (default: POSTGRES_USER)
#   PGDATA             the data directory (default /var/lib/postgresql/data)
#   POSTGRES_INITDB_ARGS  extra initdb arguments
#
# On the first start (PGDATA has no PG_VERSION) it runs initdb, creates the database, runs
# /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh on a server that listens on its Unix
# socket only, stops it, then exec's postgres (PID 1, so it gets the stop signal itself).
# Started as root, it prepares PGDATA and re-runs itself as the postgres user.
set -Eeuo pipefail

fail() {
	echo "course-audit-postgres: error: $*" >&2
	exit 1
}

# `docker run IMAGE -c key=value`: options for postgres.
if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" != 'postgres' ]; then
	exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = '0' ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chmod 3777 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_USER:=postgres}"
	: "${POSTGRES_DB:=$POSTGRES_USER}"
	if [ -z "${POSTGRES_PASSWORD:-}" ]; then
		fail "POSTGRES_PASSWORD is not set: the database is uninitialized and needs a" \
			"superuser password (host connections are authenticated with scram-sha-256)"
	fi
	if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
		fail "$PGDATA is not empty but holds no database (no PG_VERSION); refusing to initdb over it"
	fi
	echo "course-audit-postgres: initializing $PGDATA"
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of arguments
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		--auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
		${POSTGRES_INITDB_ARGS:-}
	{
		echo
		echo "# course-audit-postgres: any host, password (scram-sha-256)"
		echo "host all all all scram-sha-256"
	} >> "$PGDATA/pg_hba.conf"
	{
		echo
		echo "# course-audit-postgres"
		echo "listen_addresses = '*'"
		echo "password_encryption = 'scram-sha-256'"
	} >> "$PGDATA/postgresql.conf"

	# A server nobody can reach over TCP while the database is being set up: clients wait for
	# the real one.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
	export PGUSER="$POSTGRES_USER" PGHOST=/var/run/postgresql PGPORT=5432
	psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --dbname postgres)
	if [ "$POSTGRES_DB" != 'postgres' ]; then
		"${psql[@]}" --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db";
		EOSQL
	fi
	shopt -s nullglob
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh)
				echo "course-audit-postgres: running $f"
				if [ -x "$f" ]; then "$f"; else . "$f"; fi
				;;
			*.sql)
				echo "course-audit-postgres: running $f"
				"${psql[@]}" --dbname "$POSTGRES_DB" -f "$f"
				;;
			*.sql.gz)
				echo "course-audit-postgres: running $f"
				gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB"
				;;
			*) echo "course-audit-postgres: ignoring $f" ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop
	unset PGUSER PGHOST PGPORT
	echo "course-audit-postgres: init process complete; ready for start up"
fi

exec "$@"
