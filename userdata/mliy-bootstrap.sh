#!/bin/bash
# mliy-bootstrap.sh: first boot of an MLiy notebook instance (Amazon Linux 2023, Ubuntu),
# run as root. Mounts the extra volume (formats it only if empty), creates the notebook
# user, installs jupyterhub-singleuser unless the AMI has it, writes the server's env to
# a root-only file, installs mliy-notebook.service (starts the server on every boot) and
# reports each step to the hub's mliy service. Keep it small: EC2 takes 16 KB of user
# data, including the preamble.
#
# MLiy placeholders (name in three braces), from the software configuration's params or
# replacement_tokens; the default configuration's params supply both:
#   python_packages  pip requirements for /opt/mliy/venv when the AMI has no
#                    jupyterhub-singleuser, e.g. "jupyterhub>=5,<7 jupyterlab"
#   home_mode        octal mode of the user's home folder, e.g. 700
# Each is pasted into a quoted here-document: the spawner refuses a line starting
# with any here-document delimiter of this script (MLIY_PARAM, EOF).
#
# Environment, from the preamble MLiySpawner inserts after the #! line:
#   JUPYTERHUB_*        the spawner's get_env() but the API token: JUPYTERHUB_API_URL,
#                       JUPYTERHUB_SERVICE_URL, JUPYTERHUB_SERVICE_PREFIX, JUPYTERHUB_USER, ...
#   MLIY_BOOTSTRAP_CODE one-time code, traded first thing at the mliy service for the
#                       server's API token (JUPYTERHUB_API_TOKEN: sent with progress
#                       reports, written to the env file); then worthless
#   MLIY_SERVICE_URL    base URL of the mliy service, ending with /
#   MLIY_NOTEBOOK_PORT  port the server listens on (all interfaces)
#   MLIY_NOTEBOOK_USER  unix user name (sanitised by the spawner, checked here)
#   MLIY_VOLUME_DEVICE  extra volume's device, e.g. /dev/sdf; empty: no volume
#   MLIY_VOLUME_MOUNT   its mount point, e.g. /home
#   MLIY_ENV_NAMES      names the preamble exported; all but MLIY_* go to the env file
#
# Local mode, for the embedded demo and tests only (the spawner never sets these):
#   MLIY_LOCAL_ROOT prefixes every file path (a sandbox folder). MLIY_LOCAL_MODE=1: the
#   instance id is MLIY_LOCAL_INSTANCE_ID (not IMDS), the server binds 127.0.0.1 on
#   MLIY_LOCAL_PORT as the current user, system commands are stubs on PATH.
set -Eeuo pipefail
umask 022

R=${MLIY_LOCAL_ROOT:-}
LOCAL=${MLIY_LOCAL_MODE:-0}
ENV_FILE=$R/etc/mliy/notebook.env
LAUNCHER=$R/usr/local/bin/mliy-notebook
UNIT=mliy-notebook.service
UNIT_FILE=$R/etc/systemd/system/$UNIT
VENV=$R/opt/mliy/venv
PYTHON_PACKAGES=$(cat <<'MLIY_PARAM'
{{{python_packages}}}
MLIY_PARAM
)
HOME_MODE=$(cat <<'MLIY_PARAM'
{{{home_mode}}}
MLIY_PARAM
)
STEP=starting PERCENT=0 DONE=0 SCHEME=http ID="" DEVICE=""
URL=${MLIY_SERVICE_URL:-}
[[ -z $URL || $URL == */ ]] || URL=$URL/

log() { printf 'mliy-bootstrap: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }
q() { printf %q "$1"; }

# POST the step to the mliy service; never fails. The token reaches curl on stdin (-H @-),
# so it shows neither in ps nor in any log. The hub records which server owns this
# instance moments after it sees it: the first report, which may beat it and be refused,
# is retried on any error; later ones only on transient errors.
FIRST_REPORT=1
report() {
  [[ -n $ID && -n $URL ]] || return 0
  local retry=(--retry 2 --retry-delay 1)
  ((FIRST_REPORT)) && retry=(--retry 5 --retry-delay 1 --retry-all-errors)
  FIRST_REPORT=0
  curl -sS --fail --max-time 10 "${retry[@]}" -o /dev/null -H @- \
    -H "Content-Type: application/json" --data-binary \
    "$(printf '{"step": "%s", "percent": %d, "failed": %s}' "$1" "$2" "$3")" \
    "${URL}api/progress/$ID" <<<"Authorization: token ${JUPYTERHUB_API_TOKEN:-}" ||
    log "could not report \"$1\" (continuing)"
}
step() {
  STEP=$1 PERCENT=$2
  log "$STEP ($PERCENT%)"
  report "$STEP" "$PERCENT" false
}
on_exit() {
  local rc=$?
  if ((rc && !DONE)); then
    log "\"$STEP\" failed (exit $rc${LINE:+, line $LINE})"
    report "$STEP" "$PERCENT" true
  fi
  exit "$rc"
}
trap 'LINE=$LINENO' ERR
trap on_exit EXIT

instance_id() {
  if [[ $LOCAL == 1 ]]; then
    printf %s "${MLIY_LOCAL_INSTANCE_ID:-}"
    return
  fi
  local imds=http://169.254.169.254/latest token
  token=$(curl -sSf --max-time 5 --retry 10 --retry-connrefused -X PUT \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$imds/api/token") || return 0
  curl -sSf --max-time 5 --retry 5 -H @- "$imds/meta-data/instance-id" \
    <<<"X-aws-ec2-metadata-token: $token" || true
}

# Trade the one-time code for the server's API token. The code goes to curl on stdin,
# so it shows in no process list; 409 means the hub has not seen this instance yet.
fetch_token() {
  local code=${MLIY_BOOTSTRAP_CODE:-} answer="" status=000 tries
  unset MLIY_BOOTSTRAP_CODE
  [[ -n $code && -z ${JUPYTERHUB_API_TOKEN:-} ]] || return 0
  [[ -n $ID && -n $URL ]] || fail "no instance id or service URL to fetch the API token with"
  for ((tries = 0; tries < 60; tries++)); do
    # the answer stays in memory (no file), its status on the last line
    answer=$(curl -sS --max-time 10 -w '\n%{http_code}' \
      -H "Content-Type: application/json" --data-binary @- \
      "${URL}api/bootstrap/$ID" <<<"{\"code\": \"$code\"}") || answer=$'\n000'
    status=${answer##*$'\n'}
    [[ $status == 200 ]] && break
    [[ $status == 409 || $status == 429 || $status == 5* || $status == 000 ]] ||
      fail "the mliy service refused the bootstrap code (HTTP $status)"
    sleep 2
  done
  [[ $status == 200 && $answer =~ \"token\":\ *\"([A-Za-z0-9_-]+)\" ]] ||
    fail "could not fetch the API token from the mliy service (HTTP $status)"
  JUPYTERHUB_API_TOKEN=${BASH_REMATCH[1]}
  export -n JPY_API_TOKEN="$JUPYTERHUB_API_TOKEN" # configure_server reads both by name
  MLIY_ENV_NAMES="${MLIY_ENV_NAMES:-} JUPYTERHUB_API_TOKEN JPY_API_TOKEN"
}

check_environment() {
  local name
  for name in JUPYTERHUB_API_TOKEN MLIY_SERVICE_URL MLIY_NOTEBOOK_USER; do
    [[ -n ${!name:-} ]] || fail "$name is not set"
  done
  if [[ $LOCAL == 1 ]]; then
    [[ $R == /* ]] || fail "MLIY_LOCAL_MODE=1 needs MLIY_LOCAL_ROOT, an absolute folder"
    IP=127.0.0.1 PORT=${MLIY_LOCAL_PORT:-}
  else
    ((EUID == 0)) || fail "run me as root"
    IP=0.0.0.0 PORT=${MLIY_NOTEBOOK_PORT:-}
  fi
  if [[ ! $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then
    fail "port $(q "$PORT") is not a port number, 1-65535"
  fi
  NB_USER=$MLIY_NOTEBOOK_USER
  [[ $NB_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ && $NB_USER != root ]] ||
    fail "MLIY_NOTEBOOK_USER $(q "$NB_USER") is not allowed: [a-z_][a-z0-9_-]{0,31}, not root"
  [[ $HOME_MODE =~ ^[0-7]{3,4}$ ]] || fail "home_mode $(q "$HOME_MODE") is not a mode like 700"
  HOME_DIR=/home/$NB_USER
  DEVICE=${MLIY_VOLUME_DEVICE:-} MOUNT=${MLIY_VOLUME_MOUNT:-}
  [[ -z $DEVICE ]] && return
  [[ $DEVICE =~ ^/dev/[A-Za-z0-9._/-]+$ ]] || fail "MLIY_VOLUME_DEVICE $(q "$DEVICE") is not a /dev path"
  [[ $MOUNT =~ ^/[A-Za-z0-9._/-]+$ && $MOUNT != *..* ]] ||
    fail "MLIY_VOLUME_MOUNT $(q "$MOUNT") is not an absolute folder"
}

# The volume: the configured device, its Xen name (/dev/xvdf), or on Nitro the one EBS
# NVMe disk that is not the root disk (AL2023's udev rules link the configured name to
# it, Ubuntu's do not).
find_device() {
  local dev link root disks=()
  for dev in "$DEVICE" "${DEVICE/#\/dev\/sd//dev/xvd}"; do
    [[ -e $R$dev ]] && { echo "$dev"; return; }
  done
  root=$(findmnt -no SOURCE / 2>/dev/null || true)
  for link in "$R"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol*; do
    [[ -e $link && $link != *-part* ]] || continue
    dev=$(readlink -f "$link")
    [[ $root == "$dev" || $root == "$dev"p* || " ${disks[*]} " == *" $dev "* ]] || disks+=("$dev")
  done
  ((${#disks[@]} == 1)) && echo "${disks[0]}"
}

mount_volume() {
  local dev="" tries fstype rc=0 uuid tmp=$R/mnt/mliy-volume
  for ((tries = 0; tries < 150; tries++)); do # attaching may finish after boot
    dev=$(find_device) && break
    sleep 2
  done
  [[ -n $dev ]] || fail "volume $DEVICE did not appear in 300 s"
  fstype=$(blkid -o value -s TYPE -- "$R$dev") || rc=$?
  mkdir -p "$R$MOUNT"
  if ((rc == 2)); then # blkid found no filesystem: a new volume
    fstype=ext4
    command -v mkfs.xfs >/dev/null && fstype=xfs
    "mkfs.$fstype" -q "$R$dev"
    if [[ -n $(ls -A "$R$MOUNT") ]]; then # keep what the AMI has there (SSH keys in /home)
      mkdir -p "$tmp"
      mount "$R$dev" "$tmp"
      cp -a "$R$MOUNT/." "$tmp/"
      umount "$tmp"
    fi
  elif ((rc)); then
    fail "blkid could not read $dev (exit $rc); not formatting it"
  fi
  uuid=$(blkid -o value -s UUID -- "$R$dev")
  grep -qsF " $MOUNT " "$R/etc/fstab" ||
    echo "UUID=$uuid $MOUNT $fstype defaults,nofail 0 2" >>"$R/etc/fstab"
  mount "$R$dev" "$R$MOUNT"
}

create_user() {
  local uid
  if uid=$(id -u "$NB_USER" 2>/dev/null); then # never take over an AMI's own account
    ((uid >= 1000)) || fail "$NB_USER is a system account (uid $uid); not running a server as it"
  else
    useradd --create-home --home-dir "$R$HOME_DIR" --shell /bin/bash --user-group "$NB_USER"
  fi
  mkdir -p "$R$HOME_DIR"
  chown "$NB_USER:$NB_USER" "$R$HOME_DIR"
  chmod "$HOME_MODE" "$R$HOME_DIR"
  if [[ -n $DEVICE && $MOUNT != /home ]]; then
    chown "$NB_USER:$NB_USER" "$R$MOUNT" # the volume is the user's data folder
  fi
}

install_server() {
  local pkgs=()
  if [[ -x $VENV/bin/jupyterhub-singleuser ]]; then
    SINGLEUSER=$VENV/bin/jupyterhub-singleuser
  elif SINGLEUSER=$(command -v jupyterhub-singleuser); then
    log "using the AMI's $SINGLEUSER"
  else
    read -r -a pkgs <<<"${PYTHON_PACKAGES//$'\n'/ }"
    ((${#pkgs[@]})) || fail "no jupyterhub-singleuser, and python_packages is empty"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      if command -v dnf >/dev/null; then
        dnf -y -q install python3 python3-pip
      else
        apt-get -q update
        DEBIAN_FRONTEND=noninteractive apt-get -y -q install python3 python3-venv
      fi
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --no-input "${pkgs[@]}"
    SINGLEUSER=$VENV/bin/jupyterhub-singleuser
    [[ -x $SINGLEUSER ]] || fail "python_packages did not install jupyterhub-singleuser"
  fi
}

# A systemd EnvironmentFile assignment: in double quotes, \ " ` $ escaped with \.
env_line() {
  local v=$2 b=\\ c
  for c in "$b" '"' '`' '$'; do v=${v//"$c"/"$b$c"}; done
  printf '%s="%s"\n' "$1" "$v"
}

configure_server() {
  local names=() name extra=()
  read -r -a names <<<"${MLIY_ENV_NAMES:-}"
  ((${#names[@]})) || mapfile -t names < <(compgen -e | grep -E '^(JUPYTERHUB|JPY)_')
  [[ ${JUPYTERHUB_SERVICE_URL:-} == https://* ]] && SCHEME=https
  mkdir -p "${ENV_FILE%/*}" "${LAUNCHER%/*}" "${UNIT_FILE%/*}"
  chmod 700 "${ENV_FILE%/*}"
  (
    umask 077
    for name in "${names[@]}"; do
      [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ && $name != MLIY_* && -v $name ]] || continue
      [[ $name == JUPYTERHUB_SERVICE_URL ]] || env_line "$name" "${!name}"
    done
    # jupyterhub-singleuser binds to the address in JUPYTERHUB_SERVICE_URL
    env_line JUPYTERHUB_SERVICE_URL "$SCHEME://$IP:$PORT${JUPYTERHUB_SERVICE_PREFIX:-/}"
  ) >"$ENV_FILE.new"
  chmod 600 "$ENV_FILE.new"
  mv -f "$ENV_FILE.new" "$ENV_FILE"

  [[ $LOCAL == 1 ]] && ((EUID == 0)) && extra=(--allow-root)
  {
    printf '#!/bin/bash\n# Run by %s with %s loaded.\nexec' "$UNIT" "$ENV_FILE"
    printf ' %q' "$SINGLEUSER" "--ip=$IP" "--port=$PORT" "${extra[@]}"
    echo
  } >"$LAUNCHER"
  chmod 755 "$LAUNCHER"

  cat >"$UNIT_FILE" <<EOF
[Unit]
Description=MLiy notebook server of $NB_USER
Wants=network-online.target
After=network-online.target local-fs.target

[Service]
User=$NB_USER
Group=$NB_USER
WorkingDirectory=$R$HOME_DIR
EnvironmentFile=$ENV_FILE
ExecStart=$LAUNCHER
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
}

start_server() {
  local tries
  systemctl daemon-reload
  systemctl enable --now "$UNIT"
  for ((tries = 0; tries < 300; tries++)); do
    curl -sk -o /dev/null --max-time 2 "$SCHEME://127.0.0.1:$PORT/" && return
    sleep 1
  done
  fail "the server did not answer on port $PORT in 300 s"
}

# The hub's values (the API token among them) stay out of the environment of the commands
# run below (useradd, pip, ...): the env file passes them to the server.
read -r -a HUB_NAMES <<<"${MLIY_ENV_NAMES:-}"
for name in "${HUB_NAMES[@]}" MLIY_ENV_NAMES; do
  if [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then export -n "${name?}"; fi
done
ID=$(instance_id)
if [[ ! $ID =~ ^[A-Za-z0-9-]{1,64}$ ]]; then
  log "no instance id: progress is not reported"
  ID=""
fi
fetch_token
step "checking the environment" 5
check_environment
if [[ -n $DEVICE ]]; then
  step "mounting the volume" 15
  mount_volume
fi
step "creating the user" 30
create_user
step "installing packages" 45
install_server
step "configuring the server" 70
configure_server
step "starting the server" 85
start_server
DONE=1
step "done" 100
