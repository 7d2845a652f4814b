#!/bin/bash
# Entrypoint of course-audit-kafka (deploy/images/build.py): Apache Kafka in KRaft mode,
# configured the way the official apache/kafka image configures it, for the parts we use.
#
# With arguments it runs them instead (`docker run IMAGE kafka-topics.sh ...`). Without, it
# writes /opt/kafka/config/server.properties and exec's the broker (PID 1, so it gets the stop
# signal itself):
#   - every KAFKA_* variable but the JVM and logging ones below is a setting: KAFKA_ dropped,
#     lower case, `_` -> `.`, `__` -> `_`, `___` -> `-` (KAFKA_ADVERTISED_LISTENERS ->
#     advertised.listeners). If there is none, config/defaults/server.properties is used whole:
#     a single node listening on 9092, controller on 9093.
#   - log.dirs defaults to /var/lib/kafka/data.
#   - CLUSTER_ID (default the official image's, 5L6g3nShT-eMCtK--X86sw): the log directories
#     are formatted for it on the first start, when they hold no meta.properties.
# Not settings: KAFKA_HEAP_OPTS (default -Xms256m -Xmx768m), KAFKA_JVM_PERFORMANCE_OPTS,
# KAFKA_OPTS, KAFKA_LOG4J_OPTS, KAFKA_LOG4J_ROOT_LOGLEVEL, KAFKA_TOOLS_LOG4J_LOGLEVEL, the
# KAFKA_JMX_*, KAFKA_GC_LOG_OPTS, KAFKA_DEBUG, KAFKA_HOME and KAFKA_VERSION.
set -Eeuo pipefail

if [ $# -gt 0 ]; then
	exec "$@"
fi

config=/opt/kafka/config
props="$config/server.properties"
not_settings=" KAFKA_HEAP_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_OPTS KAFKA_LOG4J_OPTS
 KAFKA_LOG4J_ROOT_LOGLEVEL KAFKA_LOG4J_LOGGERS KAFKA_TOOLS_LOG4J_LOGLEVEL KAFKA_JMX_OPTS
 KAFKA_JMX_PORT KAFKA_JMX_HOSTNAME KAFKA_GC_LOG_OPTS KAFKA_DEBUG KAFKA_HOME KAFKA_VERSION "

settings=()
for name in $(compgen -e | LC_ALL=C sort); do
	[[ $name == KAFKA_?* ]] || continue
	[[ $not_settings == *[[:space:]]"$name"[[:space:]]* ]] && continue
	key=${name#KAFKA_}
	key=${key,,}
	key=${key//___/-}
	key=${key//__/$'\x01'}
	key=${key//_/.}
	key=${key//$'\x01'/_}
	settings+=("$key=${!name}")
done

if ((${#settings[@]} == 0)); then
	cp "$config/defaults/server.properties" "$props"
else
	{
		echo "# written by entrypoint.sh from the KAFKA_* environment variables"
		printf '%s\n' "${settings[@]}"
	} > "$props"
fi
if ! grep -q '^log\.dirs=' "$props"; then
	echo "log.dirs=/var/lib/kafka/data" >> "$props"
fi

log_dirs=$(sed -n 's/^log\.dirs=//p' "$props" | tail -n 1)
metadata_dir=$(sed -n 's/^metadata\.log\.dir=//p' "$props" | tail -n 1)
formatted=yes
IFS=',' read -r -a dirs <<< "$log_dirs"
for dir in "${dirs[@]}" ${metadata_dir:+"$metadata_dir"}; do
	[ -s "$dir/meta.properties" ] || formatted=no
done

export KAFKA_LOG4J_OPTS="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$config/log4j2.properties}"
if [ "$formatted" = no ]; then
	echo "course-audit-kafka: formatting $log_dirs for cluster ${CLUSTER_ID:=5L6g3nShT-eMCtK--X86sw}"
	# --cluster-id=ID in one argument: an id may start with "-".
	KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$config/tools-log4j2.properties" \
		/opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool format \
		"--cluster-id=$CLUSTER_ID" "--config=$props" --ignore-formatted
fi

export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
export KAFKA_JVM_PERFORMANCE_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$props"
