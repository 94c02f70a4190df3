#!/usr/bin/env bash
# Prepare this (Debian/Ubuntu) machine so the test suite can run against a real PostgreSQL storage
# (``AUTOPIPEC_TEST_STORAGE=psql``, see tests/storage_fixtures.py), also when running as root.
#
#   * installs the ``postgresql`` and ``locales`` packages if they are missing,
#   * enables and generates the ``en_US.UTF-8`` locale (AiiDA creates its databases with that collation),
#   * writes wrapper scripts ``pg_ctl``, ``initdb`` and ``postgres`` into ``.ci/bin/`` (git-ignored).  When
#     invoked as root they hand the data directory to the ``postgres`` user and re-run the real binary as
#     that user (PostgreSQL refuses to run as root); as any other user they simply exec the real binary.
#
# Idempotent.  All diagnostics go to stderr; the ONLY thing printed on stdout is the directory that has to
# be prepended to PATH, so that a CI script can do:
#
#     export PATH="$(bash .ci/setup_postgres.sh):$PATH"
#
# pgtest (used by aiida's ``postgres_cluster`` fixture) looks ``pg_ctl`` up on PATH and runs
# ``pg_ctl initdb|start|stop``; ``pg_ctl`` in turn runs the ``initdb``/``postgres`` binaries that sit next
# to the real ``pg_ctl``, i.e. as the unprivileged user, so for pgtest only the ``pg_ctl`` wrapper matters.
set -euo pipefail

# Keep stdout clean: everything goes to stderr, fd 3 is the real stdout used for the final answer.
exec 3>&1 1>&2

log() { printf '[setup_postgres] %s\n' "$*" >&2; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN_DIR="$SCRIPT_DIR/bin"
PG_USER="${AUTOPIPEC_PG_USER:-postgres}"
LOCALE_NAME="en_US.UTF-8"

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

find_real_pg_ctl() {
    # Highest installed major version wins (Debian layout /usr/lib/postgresql/<ver>/bin).
    local candidates
    candidates="$(ls -1d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)"
    printf '%s' "$candidates"
}

# --------------------------------------------------------------------------------------------------------
# 1. packages
# --------------------------------------------------------------------------------------------------------
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
pkg_installed locales || missing+=(locales)
if ! pkg_installed postgresql || [[ -z "$(find_real_pg_ctl)" ]]; then
    missing+=(postgresql)
fi

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    # Do not let the package's maintainer scripts start the default cluster (no stray server on 5432):
    # a policy-rc.d returning 101 forbids service starts, we only add it if none exists and remove it after.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    cleanup_policy() { if [[ "$added_policy" == 1 ]]; then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
    cleanup_policy
    trap - EXIT
else
    log "packages already installed: postgresql locales"
fi

REAL_PG_CTL="$(find_real_pg_ctl)"
if [[ -z "$REAL_PG_CTL" ]]; then
    log "ERROR: no /usr/lib/postgresql/*/bin/pg_ctl found after installation"
    exit 1
fi
REAL_PG_BIN="$(dirname "$REAL_PG_CTL")"
log "PostgreSQL binaries: $REAL_PG_BIN ($("$REAL_PG_BIN/postgres" --version 2>/dev/null || echo '?'))"

# --------------------------------------------------------------------------------------------------------
# 2. locale
# --------------------------------------------------------------------------------------------------------
has_locale() { locale -a 2>/dev/null | grep -qixE 'en_US\.utf-?8'; }

if has_locale; then
    log "locale $LOCALE_NAME already available"
else
    log "enabling and generating locale $LOCALE_NAME"
    if [[ -f /etc/locale.gen ]] && grep -qE '^[[:space:]]*#?[[:space:]]*en_US\.UTF-8[[:space:]]+UTF-8' /etc/locale.gen; then
        "${SUDO[@]}" sed -i -E 's/^[[:space:]]*#[[:space:]]*(en_US\.UTF-8[[:space:]]+UTF-8)/\1/' /etc/locale.gen
    else
        echo 'en_US.UTF-8 UTF-8' | "${SUDO[@]}" tee -a /etc/locale.gen >/dev/null
    fi
    "${SUDO[@]}" locale-gen
    if ! has_locale; then
        log "ERROR: locale $LOCALE_NAME still not available after locale-gen"
        exit 1
    fi
fi

# --------------------------------------------------------------------------------------------------------
# 3. wrappers
# --------------------------------------------------------------------------------------------------------
if ! id "$PG_USER" >/dev/null 2>&1; then
    log "ERROR: user '$PG_USER' does not exist (it is normally created by the postgresql package)"
    exit 1
fi

mkdir -p "$BIN_DIR"

write_wrapper() {
    local name="$1" target="$BIN_DIR/$1" tmp
    tmp="$(mktemp "$BIN_DIR/.$name.XXXXXX")"
    cat >"$tmp" <<EOF
#!/usr/bin/env bash
# Generated by .ci/setup_postgres.sh - do not edit, re-run the script instead.
# Runs the real PostgreSQL '$name' as user '$PG_USER' when called as root (PostgreSQL refuses to run as
# root); the data directory (and the -l log file / -k socket directory) are handed to '$PG_USER' first.
REAL="$REAL_PG_BIN/$name"
PG_USER="$PG_USER"
EOF
    cat >>"$tmp" <<'EOF'
set -uo pipefail

if [[ ! -x "$REAL" ]]; then
    # PostgreSQL got upgraded/removed since the wrapper was generated: pick the newest available one.
    REAL="$(ls -1d /usr/lib/postgresql/*/bin/"$(basename "$0")" 2>/dev/null | sort -V | tail -n 1)"
    [[ -x "$REAL" ]] || { echo "$(basename "$0") wrapper: real binary not found" >&2; exit 127; }
fi

if [[ "$(id -u)" -ne 0 ]]; then
    exec "$REAL" "$@"
fi

datadir="${PGDATA:-}"
logfile=""
sockdir=""
prog="$(basename "$0")"
args=("$@")
n=${#args[@]}
for ((i = 0; i < n; i++)); do
    a="${args[i]}"
    case "$a" in
        -D | --pgdata) datadir="${args[i + 1]:-}" ;;
        -D*) datadir="${a#-D}" ;;
        --pgdata=*) datadir="${a#--pgdata=}" ;;
        -l | --log) [[ "$prog" == pg_ctl ]] && logfile="${args[i + 1]:-}" ;;
        --log=*) logfile="${a#--log=}" ;;
        -o | --options)
            if [[ "$prog" == pg_ctl && "${args[i + 1]:-}" =~ (^|[[:space:]])-k[[:space:]]*([^[:space:]]+) ]]; then
                sockdir="${BASH_REMATCH[2]}"
            fi ;;
        -k) [[ "$prog" == postgres ]] && sockdir="${args[i + 1]:-}" ;;
    esac
done
# initdb also accepts the data directory as a positional argument.
if [[ -z "$datadir" && "$prog" == initdb && $n -gt 0 && "${args[n - 1]}" != -* ]]; then
    datadir="${args[n - 1]}"
fi

give_dir() {  # give_dir DIR: make DIR (created if needed) owned by PG_USER, unless it is a shared dir.
    local d="$1"
    [[ -n "$d" && "$d" != / ]] || return 0
    mkdir -p "$d"
    [[ -k "$d" ]] && return 0  # sticky, world-writable dir like /tmp: already usable, never chown it
    chown -R "$PG_USER": "$d"
}
allow_traverse() {  # make sure PG_USER can reach DIR (pgtest's mkdtemp base dir is 0700 root)
    local d="$1"
    [[ -n "$d" && -d "$d" ]] || return 0
    runuser -u "$PG_USER" -- test -x "$d" 2>/dev/null || chmod o+x "$d"
}

if [[ -n "$datadir" ]]; then
    give_dir "$datadir"
    allow_traverse "$(dirname "$datadir")"
fi
if [[ -n "$sockdir" ]]; then
    give_dir "$sockdir"
    allow_traverse "$(dirname "$sockdir")"
fi
if [[ -n "$logfile" ]]; then
    allow_traverse "$(dirname "$logfile")"
    touch "$logfile" && chown "$PG_USER": "$logfile"
fi

# The unprivileged user must be able to access the current directory, otherwise e.g. initdb warns on
# stderr (which pgtest treats as a failure).  pgtest only passes absolute paths.
if ! runuser -u "$PG_USER" -- test -x "$PWD" -a -r "$PWD" 2>/dev/null; then
    cd /
fi

exec runuser -u "$PG_USER" -- "$REAL" "$@"
EOF
    chmod 755 "$tmp"
    mv -f "$tmp" "$target"
}

for prog in pg_ctl initdb postgres; do
    write_wrapper "$prog"
done
log "wrappers written to $BIN_DIR (pg_ctl initdb postgres -> $REAL_PG_BIN, run as '$PG_USER' when root)"

# The only line on stdout.
printf '%s\n' "$BIN_DIR" >&3
