#!/usr/bin/env bash
# Install and start a RabbitMQ server for the AiiDA broker tests (``AUTOPIPEC_TEST_BROKER=rabbitmq``) on a
# Debian machine without systemd, as root.
#
#   * installs Debian's ``rabbitmq-server`` if missing, without letting its maintainer scripts start it,
#   * listens on loopback only (AMQP 127.0.0.1:5672, epmd and Erlang distribution on 127.0.0.1),
#   * ``consumer_timeout`` undefined: AiiDA's process tasks are acknowledged only when a process finishes,
#     which for long CalcJobs exceeds RabbitMQ's default of 30 minutes,
#   * starts ``rabbitmq-server -detached`` as user ``rabbitmq`` and waits until it answers.
#
# Idempotent: a server that already answers is left running.
set -euo pipefail

log() { printf '[setup_rabbitmq] %s\n' "$*" >&2; }
fail() { log "ERROR: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || fail "run as root (installs packages, starts the server as user rabbitmq)"

CONF_DIR=/etc/rabbitmq
READY_TIMEOUT_S="${AUTOPIPEC_RABBITMQ_TIMEOUT:-60}"
export ERL_EPMD_ADDRESS=127.0.0.1

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server"
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # forbid service starts by the package scripts
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
    if [[ "$added_policy" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
fi

mkdir -p "$CONF_DIR"
cat >"$CONF_DIR/rabbitmq.conf" <<'CONF'
# Written by .ci/setup_rabbitmq.sh: loopback only.
listeners.tcp.default = 127.0.0.1:5672
loopback_users.guest = true
CONF
cat >"$CONF_DIR/advanced.config" <<'CONF'
%% Written by .ci/setup_rabbitmq.sh: no consumer timeout (AiiDA acknowledges a task when its process ends).
[{rabbit, [{consumer_timeout, undefined}]}].
CONF
cat >"$CONF_DIR/rabbitmq-env.conf" <<'CONF'
# Written by .ci/setup_rabbitmq.sh: Erlang port mapper and distribution on loopback only.
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CONF

as_rabbitmq() { runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq ERL_EPMD_ADDRESS=127.0.0.1 "$@"; }

if as_rabbitmq rabbitmqctl -q status >/dev/null 2>&1; then
    log "already running"
else
    install -d -o rabbitmq -g rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
    log "starting rabbitmq-server as user rabbitmq"
    as_rabbitmq rabbitmq-server -detached >/dev/null 2>&1 || true  # the wait below reports failures
    if ! as_rabbitmq timeout "$READY_TIMEOUT_S" rabbitmqctl -q wait --timeout "$READY_TIMEOUT_S" \
        /var/lib/rabbitmq/mnesia/rabbit@localhost.pid >/dev/null 2>&1; then
        tail -n 30 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
        fail "rabbitmq-server did not become ready within ${READY_TIMEOUT_S} s (log above)"
    fi
fi

# AMQP must answer on loopback, which is what AiiDA's core.rabbitmq broker connects to.
if ! timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; then
    fail "RabbitMQ runs but nothing answers on 127.0.0.1:5672"
fi
log "ready: $(as_rabbitmq rabbitmqctl -q version 2>/dev/null || echo '?') on 127.0.0.1:5672"
