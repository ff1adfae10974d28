#!/bin/sh
# Run once by the postgres image when it initialises the primary (docker-entrypoint-initdb.d):
# lets the read replica of deploy/compose.yaml stream the WAL (pg_basebackup -R) over
# compose's private network. The official image's pg_hba.conf has no replication entry.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
