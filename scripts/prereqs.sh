#!/usr/bin/env bash
# Install and start what kiln needs on Debian (run as root): Docker's engine (docker.io),
# debootstrap, HAProxy (its binary checks rendered configs in tests), wrk, git, Chromium and its
# driver (the dashboard's browser test); then start
# dockerd if no engine answers, and install kiln into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;36m›\033[0m %s\n' "$*" >&2; }

need=()
for pair in dockerd:docker.io debootstrap:debootstrap gpgv:gpgv haproxy:haproxy wrk:wrk git:git curl:curl ip:iproute2 docker-compose:docker-compose \
    qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils sfdisk:fdisk mkfs.vfat:dosfstools mcopy:mtools syslinux:syslinux \
    chromium:chromium chromedriver:chromium-driver; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv python3-pip)
# debootstrap checks Debian's signatures against this keyring (kiln passes --force-check-gpg).
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
# VM images (`kiln bake --vm`): syslinux's boot code for the disk's MBR.
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Every container this engine runs gets no-new-privileges, also Swarm tasks, whose service spec
# cannot ask for it (docs/fleet.md). Only written when there is no daemon.json yet.
if [ ! -e /etc/docker/daemon.json ]; then
  mkdir -p /etc/docker
  printf '{"no-new-privileges": true}\n' >/etc/docker/daemon.json
fi

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then :; else
    nohup dockerd >/var/log/kiln-dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/kiln-dockerd.log" >&2; exit 1; }
fi

# KILN_LIVE_RESTORE=1: dockerd's live-restore, so containers (kiln's router and instances) keep
# serving while dockerd restarts or is upgraded. Off by default: Docker refuses it on a Swarm node
# ("--live-restore daemon configuration is incompatible with swarm mode": `docker swarm init`
# fails, and a restarted manager does not start its cluster component), and on this project's
# test machine the same dockerd becomes the test cluster's manager (scripts/cluster.sh), as it
# does for `engine: swarm` users. Never turned on for an engine that is a Swarm node now.
if [ "${KILN_LIVE_RESTORE:-0}" = 1 ]; then
  swarm=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
  if [ "$swarm" != inactive ]; then
    say "not enabling live-restore: this dockerd is a Swarm node ($swarm), which Docker does not allow"
  elif [ "$(docker info --format '{{.LiveRestoreEnabled}}')" != true ]; then
    say "enabling dockerd live-restore in /etc/docker/daemon.json"
    python3 - <<'EOF'
import json, pathlib
p = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(p.read_text() or "{}") if p.exists() else {}
config["live-restore"] = True
p.write_text(json.dumps(config) + "\n")
EOF
    # live-restore is reloadable: SIGHUP, no restart (which would stop every container once more)
    if [ -d /run/systemd/system ] && systemctl is-active -q docker 2>/dev/null; then systemctl reload docker;
    else kill -HUP "$(cat /var/run/docker.pid)"; fi
    for _ in $(seq 20); do [ "$(docker info --format '{{.LiveRestoreEnabled}}')" = true ] && break; sleep 0.5; done
  fi
fi

if [ ! -x .venv/bin/kiln ] || [ pyproject.toml -nt .venv/.installed ]; then
  say "installing kiln into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
ln -sf "$PWD/.venv/bin/kiln" /usr/local/bin/kiln
