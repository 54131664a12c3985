#!/bin/sh
# Installs what `make bench` needs, if it is missing (see install-deps.sh).
exec sh "$(dirname "$0")/install-deps.sh" --name install-bench-deps --optional linux-perf \
    build-essential python3 procps util-linux valgrind nginx-light wrk
