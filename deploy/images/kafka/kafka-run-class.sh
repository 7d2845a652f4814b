#!/bin/sh
# course-audit-kafka: run one of Apache Kafka's main classes with the jars in /opt/kafka/libs.
#   kafka-run-class.sh CLASS [ARGUMENT ...]
# As Kafka's own script: KAFKA_HEAP_OPTS (default -Xmx256m), KAFKA_JVM_PERFORMANCE_OPTS,
# KAFKA_LOG4J_OPTS (default: warnings to standard error) and KAFKA_OPTS.
if [ $# -lt 1 ]; then
	echo "usage: kafka-run-class.sh CLASS [ARGUMENT ...]" >&2
	exit 2
fi
main=$1
shift
# shellcheck disable=SC2086  # each *_OPTS variable is a list of JVM options
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} \
	${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true} \
	${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties} \
	${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*' "$main" "$@"
