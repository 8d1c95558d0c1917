#!/usr/bin/env bash
# Install, upgrade or remove the WhatsApp gateway appliance.
#
#   sudo ./install.sh                          system install (production), starts it
#   ./install.sh --prefix DIR [--port P]       the same layout under DIR, no root needed
#   ./install.sh [--prefix DIR] --uninstall    remove code (and unit); keep data, config, secrets
#   ./install.sh [--prefix DIR] --purge        remove everything, data and service user included
#
# Re-running upgrades the code and keeps the database, appliance.env and secrets
# untouched; a running appliance gets `appliancectl reload` (rolling when it can).
# Production default socket: 0.0.0.0:8080; prefix installs: 127.0.0.1:8080.
set -euo pipefail
umask 027  # data, config and logs; the code is made readable by everyone below

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=""
PORT=""
BIND=""
ACTION="install"
PURGE=0
START=1
TLS_CERT=""
TLS_KEY=""
MIN_FREE_MB="${APPLIANCE_MIN_FREE_MB:-500}"
SERVICE_USER="appliance"
UNIT="appliance.service"

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'
Options:
  --prefix DIR      install under DIR (no root, no system user, no systemd unit)
  --port PORT       listening port (written to a new appliance.env only)
  --bind ADDR       listening address (written to a new appliance.env only)
  --no-start        install or upgrade without starting the appliance
  --tls-cert FILE   serve HTTPS directly: this PEM certificate (chain) and ...
  --tls-key FILE    ... this PEM key; copied to /etc/appliance/tls/ (runbook/tls.md)
  --uninstall       remove code and unit, keep data, config and secrets
  --purge           remove code, unit, data, config, secrets, logs, the service user
                    and the directories install.sh made
  -h, --help        this help
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --port) [ $# -ge 2 ] || die "--port needs a number"; PORT="$2"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --bind) [ $# -ge 2 ] || die "--bind needs an address"; BIND="$2"; shift 2 ;;
    --bind=*) BIND="${1#*=}"; shift ;;
    --no-start) START=0; shift ;;
    --tls-cert) [ $# -ge 2 ] || die "--tls-cert needs a file"; TLS_CERT="$2"; shift 2 ;;
    --tls-key) [ $# -ge 2 ] || die "--tls-key needs a file"; TLS_KEY="$2"; shift 2 ;;
    --uninstall) ACTION="uninstall"; shift ;;
    --purge) ACTION="uninstall"; PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

SYSTEM=0
if [ -z "$PREFIX" ]; then
  [ "$(id -u)" -eq 0 ] || die "a system install needs root (sudo ./install.sh), or use --prefix DIR"
  SYSTEM=1
  ROOT=""
  DEFAULT_BIND="0.0.0.0"
else
  if [ "$ACTION" != "install" ] && [ ! -d "$PREFIX" ]; then
    say "nothing installed under $PREFIX"
    exit 0
  fi
  PREFIX_MADE=""
  [ -e "$PREFIX" ] || PREFIX_MADE=1
  mkdir -p "$PREFIX" || die "cannot create prefix $PREFIX"
  ROOT="$(cd "$PREFIX" && pwd)"
  [ -z "$PREFIX_MADE" ] || PREFIX_MADE="$ROOT"
  DEFAULT_BIND="127.0.0.1"
fi

OPT="$ROOT/opt/appliance"
VENV="$OPT/venv"
ETC="$ROOT/etc/appliance"
SECRETS="$ETC/secrets"
DATA="$ROOT/var/lib/appliance"
LOGS="$ROOT/var/log/appliance"
RUN="$ROOT/run/appliance"
CTL="$VENV/bin/appliancectl"
UNIT_FILE="/etc/systemd/system/$UNIT"
# Every directory install.sh created (parents included), one a line, and
# "user:NAME" when it created the system user: --purge removes those (directories
# only when empty) and nothing else.
MADE_LIST="$ETC/.made-by-install"

have_systemd() { [ "$SYSTEM" -eq 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

MADE=()
[ -z "${PREFIX_MADE:-}" ] || MADE+=("$PREFIX_MADE")
# make_dirs MODE DIR...: install -d, remembering each directory that did not exist.
make_dirs() {
  local mode="$1" dir d missing
  shift
  for dir in "$@"; do
    missing=()
    d="$dir"
    while [ ! -e "$d" ]; do missing=("$d" ${missing[@]+"${missing[@]}"}); d="$(dirname "$d")"; done
    for d in ${missing[@]+"${missing[@]}"}; do
      [ "$d" = "$dir" ] || install -d -m 0755 "$d"
      MADE+=("$d")
    done
    install -d -m "$mode" "$dir"
  done
}

running() {
  # Our supervisord is alive when its pid file names a living process.
  local pidfile="$RUN/supervisord.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

stop_appliance() {
  if have_systemd && [ -f "$UNIT_FILE" ]; then
    systemctl stop "$UNIT" || true
  fi
  if [ -x "$CTL" ] && running; then
    "$CTL" --prefix "${ROOT:-/}" stop || true
  fi
  ! running || die "the appliance (supervisord pid $(cat "$RUN/supervisord.pid")) did not stop; see $LOGS/supervisord.log"
}

# -- uninstall / purge -------------------------------------------------------------------
if [ "$ACTION" != "install" ]; then
  stop_appliance
  if [ "$SYSTEM" -eq 1 ] && [ -f "$UNIT_FILE" ]; then
    if have_systemd; then
      systemctl disable "$UNIT" >/dev/null 2>&1 || true
    fi
    rm -f "$UNIT_FILE"
    if have_systemd; then systemctl daemon-reload; fi
  fi
  rm -rf "$OPT" "$RUN"
  if [ "$PURGE" -eq 1 ]; then
    made=()
    made_user=1  # an install.sh too old to keep the list always created the user
    if [ -f "$MADE_LIST" ]; then
      mapfile -t made < "$MADE_LIST"
      grep -qxF "user:$SERVICE_USER" "$MADE_LIST" || made_user=0
    fi
    rm -rf "$DATA" "$ETC" "$LOGS"
    if [ "$SYSTEM" -eq 1 ] && [ "$made_user" -eq 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
      userdel "$SERVICE_USER" || die "could not remove the system user $SERVICE_USER (see userdel's message)"
      say "removed system user $SERVICE_USER"
    fi
    if [ "$SYSTEM" -eq 1 ] && [ "$made_user" -eq 1 ] && getent group "$SERVICE_USER" >/dev/null; then
      groupdel "$SERVICE_USER" || die "could not remove the group $SERVICE_USER"
    fi
    # Deepest first; only empty directories install.sh made, never anything else.
    for ((i = ${#made[@]} - 1; i >= 0; i--)); do
      case "${made[i]}" in /*) [ -d "${made[i]}" ] && rmdir "${made[i]}" 2>/dev/null || true ;; esac
    done
    say "purged: code, data, config, secrets and logs removed"
  else
    say "uninstalled code; kept data ($DATA), config and secrets ($ETC), logs ($LOGS)"
  fi
  exit 0
fi

# -- pre-flight checks: fail early with the fix ------------------------------------------
PYTHON=""
# APPLIANCE_PYTHON, when set, is the only interpreter considered.
candidates="python3.13 python3.12 python3.11 python3"
[ -n "${APPLIANCE_PYTHON:-}" ] && candidates="$APPLIANCE_PYTHON"
# A system install's venv is run by the service user: its interpreter and standard
# library must be open to others (not, say, a pyenv build under root's 0700 home).
open_to_others() {
  "$1" - <<'PY' 2>/dev/null
import os, stat, sys
exe = os.path.realpath(sys.executable)
for path in (exe, os.path.realpath(os.path.dirname(os.__file__))):
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            sys.exit(1)
        if path == "/":
            break
        path = os.path.dirname(path)
print(exe)
PY
}
CLOSED=""
for candidate in $candidates; do
  [ -n "$candidate" ] || continue
  for found in $(type -ap "$candidate" 2>/dev/null); do
    "$found" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || continue
    if [ "$SYSTEM" -eq 0 ]; then
      PYTHON="$found"; break 2
    fi
    if real="$(open_to_others "$found")" && [ -n "$real" ]; then
      PYTHON="$real"; break 2
    fi
    CLOSED="$found"
  done
done
if [ -z "$PYTHON" ] && [ -n "$CLOSED" ]; then
  die "$CLOSED is Python 3.11+, but it lives where the $SERVICE_USER user cannot read it (the service runs the venv built on it). Install Debian's: apt-get install python3 python3-venv, or set APPLIANCE_PYTHON to an interpreter outside /root"
fi
[ -n "$PYTHON" ] || die "Python 3.11 or newer is required (found: $(${APPLIANCE_PYTHON:-python3} --version 2>&1 || echo none)). On Debian/Ubuntu: apt-get install python3 python3-venv"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "the Python venv module is missing. On Debian/Ubuntu: apt-get install python3-venv"

if [ -n "$PORT" ]; then
  case "$PORT" in ''|*[!0-9]*) die "--port must be a number between 1 and 65535, got '$PORT'" ;; esac
  [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "--port must be between 1 and 65535, got $PORT"
fi
if [ -n "$BIND" ]; then
  "$PYTHON" -c 'import ipaddress,sys; ipaddress.ip_address(sys.argv[1])' "$BIND" 2>/dev/null ||
    die "--bind must be an IP address such as 127.0.0.1 or 0.0.0.0, got '$BIND'"
fi

# The web engine (neonize) loads libmagic; the other engines do not need it.
if ! ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1'; then
  if [ "$SYSTEM" -eq 1 ] && command -v apt-get >/dev/null; then
    say "installing libmagic1 (needed by the web engine)"
    apt-get install -y -q libmagic1 >/dev/null || die "apt-get install libmagic1 failed; install it and re-run"
  else
    say "warning: libmagic1 is missing: web engine accounts will fail until 'apt-get install libmagic1'"
  fi
fi

for parent in "$ROOT/opt" "$ROOT/var/lib"; do
  [ -d "$parent" ] || make_dirs 0755 "$parent"
done
free_mb=$(df -Pm "$ROOT/var/lib" | awk 'NR==2 {print $4}')
[ "${free_mb:-0}" -ge "$MIN_FREE_MB" ] || die "only ${free_mb} MB free under $ROOT/var/lib; at least $MIN_FREE_MB MB are needed. Free some disk space and re-run."

# The port is checked only when the appliance is not already the one holding it.
KEPT_PORT=""
KEPT_BIND=""
if [ -f "$ETC/appliance.env" ]; then
  KEPT_PORT="$(sed -n 's/^PORT=//p' "$ETC/appliance.env" | tail -n1)"
  KEPT_BIND="$(sed -n 's/^BIND=//p' "$ETC/appliance.env" | tail -n1)"
  CHECK_PORT="$KEPT_PORT"
  CHECK_BIND="$KEPT_BIND"
fi
CHECK_PORT="${CHECK_PORT:-${PORT:-8080}}"
CHECK_BIND="${CHECK_BIND:-${BIND:-$DEFAULT_BIND}}"
if ! running; then
  "$PYTHON" - "$CHECK_BIND" "$CHECK_PORT" <<'PY' || die "port $CHECK_PORT on $CHECK_BIND is already in use by another program; choose another with --port, or stop that program (see: ss -ltnp 'sport = :$CHECK_PORT')"
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
fi

# -- service user and layout -------------------------------------------------------------
if [ "$SYSTEM" -eq 1 ] && ! id "$SERVICE_USER" >/dev/null 2>&1; then
  useradd --system --home-dir "$DATA" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  MADE+=("user:$SERVICE_USER")
  say "created system user $SERVICE_USER"
fi

make_dirs 0755 "$OPT"
make_dirs 0750 "$ETC" "$DATA" "$DATA/media" "$DATA/sessions" "$LOGS" "$RUN"
make_dirs 0700 "$SECRETS"
if [ "${#MADE[@]}" -gt 0 ]; then
  printf '%s\n' "${MADE[@]}" >> "$MADE_LIST"
  chmod 0640 "$MADE_LIST"
fi

# -- an upgrade keeps the previous code until the new one has started --------------------
# If the new code fails to migrate or start, install.sh puts this copy back (and the
# pre-upgrade backup, below) and starts the previous version again; removed on success.
PREVIOUS="$OPT/previous"
rm -rf "$PREVIOUS"
if [ "$START" -eq 1 ] && [ -x "$VENV/bin/appliancectl" ] && [ -f "$DATA/appliance.db" ]; then
  mkdir -p "$PREVIOUS"
  cp -a "$VENV" "$PREVIOUS/venv"
  for f in supervisord.conf requirements.lock; do
    [ ! -f "$OPT/$f" ] || cp -a "$OPT/$f" "$PREVIOUS/$f"
  done
  say "kept the previous code in $PREVIOUS until the new one runs"
fi

# -- code: a venv with this source installed into it (re-run = upgrade) ------------------
# Code is not secret: readable and executable by everyone (the service user runs it),
# writable by the installing user only.
umask 022
# A venv an older install.sh built on an interpreter closed to the service user.
if [ "$SYSTEM" -eq 1 ] && [ -f "$VENV/pyvenv.cfg" ] &&
   ! grep -qxF "home = $(dirname "$PYTHON")" "$VENV/pyvenv.cfg"; then
  say "rebuilding $VENV on $PYTHON"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
say "installing the appliance into $VENV"
# Build from a private copy: setuptools writes build/ into the tree it builds, so two
# installs from one checkout at once (tests, CI) would otherwise race on it.
BUILD_SRC=$(mktemp -d)
trap 'rm -rf "$BUILD_SRC"' EXIT
tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml README.md appliance | tar -C "$BUILD_SRC" -xf -
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  ${APPLIANCE_PIP_ARGS:-} --upgrade --force-reinstall --no-deps "$BUILD_SRC" \
  || die "installing the appliance package failed (see pip's message above)"
# Dependencies from the committed lock file: every version pinned, every file's hash
# checked (pip --require-hashes), so two installs a month apart run the same code.
LOCK="$SRC/requirements.lock"
if [ -f "$LOCK" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    ${APPLIANCE_PIP_ARGS:-} --require-hashes --no-deps -r "$LOCK" \
    || die "installing the locked dependencies failed (see pip's message above); requirements.lock pins each file by hash: a mismatch means a changed or foreign download"
  "$VENV/bin/python" -m pip check >/dev/null \
    || die "the locked dependencies do not satisfy the appliance's requirements ($("$VENV/bin/python" -m pip check 2>&1 | head -n 3)); regenerate requirements.lock with scripts/lock"
  install -m 0644 "$LOCK" "$OPT/requirements.lock"
  say "dependencies installed from requirements.lock (sha256 $(sha256sum "$LOCK" | cut -d' ' -f1))"
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${APPLIANCE_PIP_ARGS:-} "$BUILD_SRC" \
    || die "installing the appliance's dependencies failed (see pip's message above)"
fi
install -m 0644 "$SRC/supervisord.conf" "$OPT/supervisord.conf"
umask 027
if [ "$SYSTEM" -eq 1 ]; then
  # Also repairs a venv an older install.sh left closed to the service user.
  chown -R root:root "$OPT"
  chmod -R u+rwX,go+rX,go-w "$OPT"
fi

# -- config: written once, never overwritten -----------------------------------------------
if [ ! -f "$ETC/appliance.env" ]; then
  cat > "$ETC/appliance.env" <<ENV
# Appliance settings (non-secret). Edit, then: appliancectl reload
# Every key can be overridden by an environment variable APPLIANCE_<KEY>.
BIND=${BIND:-$DEFAULT_BIND}
PORT=${PORT:-8080}
# Public URL people and Meta use to reach this appliance (https recommended).
PUBLIC_URL=
# Number of API processes; 0 means the CPU count, at least 2.
API_PROCESSES=0
DATA_DIR=$DATA
LOG_DIR=$LOGS
RUN_DIR=$RUN
LOG_LEVEL=INFO
ENV
  chmod 0640 "$ETC/appliance.env"
  say "wrote $ETC/appliance.env"
fi
# --port/--bind only write a new appliance.env; say how to change an existing one.
SOCKET_HINT=""
if [ -n "$PORT" ] && [ -n "$KEPT_PORT" ] && [ "$PORT" != "$KEPT_PORT" ]; then
  SOCKET_HINT="PORT=$PORT"
fi
if [ -n "$BIND" ] && [ -n "$KEPT_BIND" ] && [ "$BIND" != "$KEPT_BIND" ]; then
  SOCKET_HINT="${SOCKET_HINT:+$SOCKET_HINT and }BIND=$BIND"
fi

# -- TLS: --tls-cert/--tls-key copied beside the config, named in appliance.env ----------
set_env() {  # KEY VALUE: replace the KEY= line of appliance.env, or add one
  local key="$1" value="$2" file="$ETC/appliance.env"
  if grep -q "^$key=" "$file"; then
    sed -i "s|^$key=.*|$key=$value|" "$file"
  else
    printf '%s=%s\n' "$key" "$value" >> "$file"
  fi
}
if [ -n "$TLS_CERT$TLS_KEY" ]; then
  [ -n "$TLS_CERT" ] && [ -n "$TLS_KEY" ] || die "--tls-cert and --tls-key go together"
  [ -r "$TLS_CERT" ] || die "--tls-cert $TLS_CERT is not a readable file"
  [ -r "$TLS_KEY" ] || die "--tls-key $TLS_KEY is not a readable file"
  make_dirs 0755 "$ETC/tls"
  install -m 0644 "$TLS_CERT" "$ETC/tls/cert.pem"
  ( umask 077; cp "$TLS_KEY" "$ETC/tls/key.pem.tmp" ) && mv "$ETC/tls/key.pem.tmp" "$ETC/tls/key.pem"
  chmod 0600 "$ETC/tls/key.pem"
  [ "$SYSTEM" -eq 0 ] || chown "$SERVICE_USER:$SERVICE_USER" "$ETC/tls/key.pem"
  set_env TLS_CERT_FILE "$ETC/tls/cert.pem"
  set_env TLS_KEY_FILE "$ETC/tls/key.pem"
  say "HTTPS: certificate $ETC/tls/cert.pem, key $ETC/tls/key.pem (0600)"
fi
ENV_BIND="$(sed -n 's/^BIND=//p' "$ETC/appliance.env" | tail -n1)"
if [ "$SYSTEM" -eq 1 ] && [ "$ENV_BIND" != "127.0.0.1" ] && [ "$ENV_BIND" != "::1" ] &&
   ! grep -q '^TLS_CERT_FILE=.' "$ETC/appliance.env" &&
   ! grep -q '^TRUSTED_PROXIES=.' "$ETC/appliance.env" &&
   ! grep -q '^PUBLIC_URL=https://' "$ETC/appliance.env"; then
  echo "install.sh: WARNING: the API listens on $ENV_BIND in plain HTTP: passwords and session" >&2
  echo "install.sh: WARNING: cookies cross the network readable. Re-run with --tls-cert FILE" >&2
  echo "install.sh: WARNING: --tls-key FILE, or put Caddy/nginx in front and set TRUSTED_PROXIES" >&2
  echo "install.sh: WARNING: and PUBLIC_URL=https://... in $ETC/appliance.env (runbook/tls.md)." >&2
fi

# -- secrets: created once, 0600 in a 0700 directory, never overwritten ------------------
new_secret() {
  local name="$1" path="$SECRETS/$1"
  [ -e "$path" ] || [ -L "$path" ] && return 0
  ( umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$path.tmp" )
  mv "$path.tmp" "$path"
  say "created secret $path"
}
for secret in session-key metrics-token data-key admin-password; do
  new_secret "$secret"
done

if [ "$SYSTEM" -eq 1 ]; then
  # Owners and modes as runbook/operations.md lists them; re-running repairs them.
  chown root:root "$ETC"; chmod 0755 "$ETC"
  [ ! -f "$MADE_LIST" ] || chown root:root "$MADE_LIST"
  chown root:"$SERVICE_USER" "$ETC/appliance.env"; chmod 0640 "$ETC/appliance.env"
  chown -R "$SERVICE_USER:$SERVICE_USER" "$SECRETS" "$DATA" "$LOGS" "$RUN"
  chmod 0750 "$DATA" "$LOGS" "$RUN"
fi

# -- the systemd unit: written whenever systemd is installed, used when it runs ----------
UNIT_CHANGED=0
if [ "$SYSTEM" -eq 1 ] && [ -d "$(dirname "$UNIT_FILE")" ]; then
  UNIT_NEW="$(mktemp)"
  cat > "$UNIT_NEW" <<UNITFILE
[Unit]
Description=WhatsApp gateway appliance (supervisord)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$SERVICE_USER
Group=$SERVICE_USER
RuntimeDirectory=appliance
RuntimeDirectoryMode=0750
UMask=0027
ExecStart=$CTL supervisord --foreground
# No ExecStop: SIGTERM to supervisord stops the API processes first, the worker last.
KillMode=mixed
TimeoutStopSec=120
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNITFILE
  cmp -s "$UNIT_NEW" "$UNIT_FILE" || UNIT_CHANGED=1
  install -m 0644 -o root -g root "$UNIT_NEW" "$UNIT_FILE"
  rm -f "$UNIT_NEW"
  if have_systemd; then
    systemctl daemon-reload
    systemctl enable "$UNIT" >/dev/null
  fi
fi

# -- before the new code migrates the database: a backup of it ---------------------------
# The worker migrates at its start; this backup (online, consistent even while the old
# code runs) is what `appliancectl restore` takes back if the upgrade goes wrong.
# -P: the installed code's migrations, never an appliance/ package in the current directory.
PENDING="$("$VENV/bin/python" -P -m appliance.ops.pre_upgrade --prefix "${ROOT:-/}" 2>/dev/null || true)"
if [ -n "$PENDING" ]; then
  FROM_SCHEMA="${PENDING% *}"
  TO_SCHEMA="${PENDING#* }"
  BACKUPS="$ROOT/var/backups/appliance"
  [ -d "$BACKUPS" ] || { mkdir -p "$BACKUPS"; chmod 0700 "$BACKUPS"; }
  [ "$SYSTEM" -eq 0 ] || chown "$SERVICE_USER:$SERVICE_USER" "$BACKUPS"
  PRE_UPGRADE="$BACKUPS/pre-upgrade-schema$FROM_SCHEMA-to-$TO_SCHEMA-$(date -u +%Y%m%dT%H%M%SZ).tar.gz"
  say "the database schema goes from version $FROM_SCHEMA to $TO_SCHEMA: backing it up first"
  "$CTL" --prefix "${ROOT:-/}" backup --to "$PRE_UPGRADE" >/dev/null \
    || die "the backup before migrating failed, so nothing was migrated: the new code is installed but not started. Fix the problem above (free space: df -h $BACKUPS) and re-run install.sh"
  say "backup before migrating: $PRE_UPGRADE (to go back: $CTL restore $PRE_UPGRADE)"
fi

# -- run it: start, or apply the upgrade to the running appliance -------------------------
start_new_code() {
  if ! running; then
    "$CTL" --prefix "${ROOT:-/}" start --wait 90
  elif have_systemd && [ "$UNIT_CHANGED" -eq 1 ]; then
    say "the systemd unit changed: restarting it"
    systemctl restart "$UNIT" && "$CTL" --prefix / start --wait 90
  else
    # Rolling (no refused connection) unless the schema or supervisord's settings changed.
    "$CTL" --prefix "${ROOT:-/}" reload --wait 90
  fi
}

# The new code did not start (a migration failed, say): the previous code and the
# pre-upgrade backup go back, and the previous version runs again.
roll_back() {
  local failed_schema
  failed_schema="$("$VENV/bin/python" -P -m appliance.ops.pre_upgrade --prefix "${ROOT:-/}" --schema 2>/dev/null || echo unknown)"
  echo "install.sh: error: the new version did not start (database schema now: $failed_schema); rolling back. Why: $LOGS/worker.log" >&2
  "$CTL" --prefix "${ROOT:-/}" stop >/dev/null 2>&1 || true
  stop_appliance
  rm -rf "$VENV"
  mv "$PREVIOUS/venv" "$VENV"
  for f in supervisord.conf requirements.lock; do
    [ ! -f "$PREVIOUS/$f" ] || mv -f "$PREVIOUS/$f" "$OPT/$f"
  done
  rm -rf "$PREVIOUS"
  say "the previous code is back in $VENV"
  if [ -n "${PRE_UPGRADE:-}" ]; then
    # The old code restores (it verifies the archive first) and starts.
    "$CTL" --prefix "${ROOT:-/}" restore "$PRE_UPGRADE" --wait 90 \
      || die "rolling back: restoring $PRE_UPGRADE failed too (see above); the data before that restore is in $(dirname "$DATA")/$(basename "$DATA").rollback-* (in $DATA/.rollback-* when $DATA is a mount point). Try: $CTL restore $PRE_UPGRADE"
    say "the database is back at schema $FROM_SCHEMA from $PRE_UPGRADE"
  else
    "$CTL" --prefix "${ROOT:-/}" start --wait 90 \
      || die "rolling back: the previous version did not start either; see $LOGS"
  fi
  die "the upgrade failed and was rolled back: the previous version runs again (backup before the upgrade: ${PRE_UPGRADE:-none, the schema did not change}). Fix the cause (see $LOGS/worker.log), then re-run install.sh"
}

if [ "$START" -eq 1 ]; then
  if ! start_new_code; then
    [ -d "$PREVIOUS/venv" ] || die "the appliance did not start; see $LOGS"
    roll_back
  fi
  rm -rf "$PREVIOUS"
elif running; then
  say "not restarted (--no-start): the running processes use the old code until: $CTL reload"
fi

PORT_NOW="$(sed -n 's/^PORT=//p' "$ETC/appliance.env" | tail -n1)"
BIND_NOW="$(sed -n 's/^BIND=//p' "$ETC/appliance.env" | tail -n1)"
HOST_NOW="$BIND_NOW"; [ "$BIND_NOW" = "0.0.0.0" ] && HOST_NOW="$(hostname -I 2>/dev/null | awk '{print $1}')"
say "done."
SCHEME=http; grep -q '^TLS_CERT_FILE=.' "$ETC/appliance.env" && SCHEME=https
echo "  web panel:            $SCHEME://${HOST_NOW:-127.0.0.1}:${PORT_NOW}/panel/"
echo "  API and docs:         $SCHEME://${HOST_NOW:-127.0.0.1}:${PORT_NOW}/"
echo "  first admin password: $SECRETS/admin-password (user: admin)"
echo "  control:              $CTL status | reload | stop | start | tail | check"
if [ -n "$SOCKET_HINT" ]; then
  say "kept PORT=$KEPT_PORT BIND=$KEPT_BIND from $ETC/appliance.env (--port and --bind only apply to a new one)."
  say "to listen on $SOCKET_HINT: set it in $ETC/appliance.env, then run: $CTL reload"
fi
