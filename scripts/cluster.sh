#!/usr/bin/env bash
# A real three-node Docker Swarm and a TLS registry on this one machine, for kiln's tests.
#
#   scripts/cluster.sh up                 build it (or repair it) and check it end to end; safe to run again
#   scripts/cluster.sh down [--keep-data] remove all of it; the machine's dockerd leaves the swarm
#   scripts/cluster.sh status             nodes, registry health, namespaces; exits 1 unless all is up
#   scripts/cluster.sh env                shell lines for callers (KILN_CLUSTER_REGISTRY, …_NODES, …)
#   scripts/cluster.sh node-stop NAME     stop one worker's dockerd (NAME: kiln-n1, kiln-n2, or n1, n2)
#   scripts/cluster.sh node-start NAME    start it again (it rejoins the swarm as the same node)
#   scripts/cluster.sh registry-stop      stop the registry's process (an outage); registry-start: back
#
# What it builds (run as root, on Debian; the machine's dockerd must answer: scripts/prereqs.sh):
# - a bridge kilnbr0 (10.77.0.1/24) on the host and two network namespaces kiln-n1 (10.77.0.11)
#   and kiln-n2 (10.77.0.12), each with a veth into the bridge and a default route via 10.77.0.1;
#   ACCEPT rules for kilnbr0 in DOCKER-USER (dockerd sets FORWARD's policy to DROP, and with
#   bridge-nf-call-iptables=1 even traffic bridged between the two namespaces goes through it),
#   and a MASQUERADE rule so the namespaces reach beyond the host. Every rule carries the comment
#   kiln-cluster and `down` deletes it.
# - one dockerd per namespace (nsenter --net only: same filesystem and cgroup mounts as the host,
#   its own UTS namespace so each node has its own hostname, kiln-n1/kiln-n2), with data under
#   /var/lib/kiln-cluster/nX, sockets, pidfile, log and daemon.json under /run/kiln-cluster/nX,
#   and its containers under the cgroup /kiln-nX.
# - a registry (Debian's docker-registry, no auth, delete enabled) on https://10.77.0.1:5000 with
#   a self-signed CA and server certificate under /var/lib/kiln-cluster/registry; the CA is
#   installed as /etc/docker/certs.d/10.77.0.1:5000/ca.crt, which every dockerd here reads.
# - a swarm: the machine's own dockerd is the manager (advertising 10.77.0.1, dispatcher
#   heartbeat 1 s so a stopped node is seen down within seconds), kiln-n1 and kiln-n2 are workers.
#   Node labels: the manager has kiln.router=true, the workers pool=web.
# `up` then pushes a local kiln-base image to 10.77.0.1:5000/kiln/probe, pulls it by digest on
# kiln-n1, and runs a global dnsrr service on an overlay network (kiln-cluster-check) whose three
# tasks must fetch from each other over the overlay, then removes the service and the network.
#
# This kernel has no IPVS (CONFIG_IP_VS is not set): swarm's VIP endpoint mode and the ingress
# routing mesh (published ports) cannot work here; use --endpoint-mode dnsrr and host-mode ports.
set -euo pipefail
cd "$(dirname "$0")/.."

BRIDGE=kilnbr0
HOST_IP=10.77.0.1
SUBNET=10.77.0.0/24
NODES=(n1 n2)
RUN=/run/kiln-cluster
DATA=/var/lib/kiln-cluster
REGISTRY=$HOST_IP:5000
REGDIR=$DATA/registry
CERTS_D=/etc/docker/certs.d/$REGISTRY
PROBE_REPO=$REGISTRY/kiln/probe
CHECK=kiln-cluster-check
COMMENT=kiln-cluster
LOCK=/run/kiln-cluster.lock
MANAGER_SOCK=unix:///var/run/docker.sock

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\033[1;36m›\033[0m [%5ss] %s\n' "$(elapsed)" "$*" >&2; }
warn() { printf '\033[1;33m!\033[0m [%5ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { printf '\033[1;31m✗ cluster.sh: %s\033[0m\n' "$*" >&2; exit 1; }

ns_of() { echo "kiln-$1"; }                       # n1 -> kiln-n1 (namespace and node hostname)
ip_of() { echo "10.77.0.1${1#n}"; }               # n1 -> 10.77.0.11
veth_of() { echo "veth-kiln-$1"; }                # host end; the namespace end is eth0
sock_of() { echo "unix://$RUN/$1/docker.sock"; }
dn() { local n=$1; shift; docker -H "$(sock_of "$n")" "$@"; }   # the docker CLI against node n
node_up() { dn "$1" info >/dev/null 2>&1; }
short() {                                         # kiln-n1 | n1 -> n1, or die
  local n=${1#kiln-}
  for m in "${NODES[@]}"; do [ "$n" = "$m" ] && { echo "$n"; return; }; done
  die "no node '$1' (nodes: ${NODES[*]/#/kiln-})"
}

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 0.25 s until it succeeds.
wait_for() {
  local limit=$1; shift 2   # $2 names what is awaited, for the reader
  local end=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.25
  done
}

# detach COMMAND...: run it in its own session, stdin from /dev/null, every descriptor above 2
# closed (a daemon must not keep the caller's lock files, e.g. `flock FILE scripts/cluster.sh up`,
# or this script's own lock, held for as long as it runs). Output goes where the caller sends it.
detach() {
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec setsid nohup "$@" </dev/null
  ) &
}

take_lock() {
  exec 9>"$LOCK"
  flock -w 600 9 || die "another scripts/cluster.sh still holds $LOCK after 10 minutes"
}

# ---------------------------------------------------------------------------------------------
# packages

install_prereqs() {
  [ "$(id -u)" = 0 ] || die "run as root (it creates namespaces, a bridge, iptables rules, dockerds)"
  local need=() pair
  for pair in docker-registry:docker-registry openssl:openssl ip:iproute2 nsenter:util-linux \
              unshare:util-linux flock:util-linux curl:curl iptables:iptables ping:iputils-ping; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
  done
  if ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian's package starts its own registry (htpasswd auth, :5000 on every address) where
    # systemd runs: that one would hold the port this script's registry needs.
    if [[ " ${need[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  fi
  command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed: run scripts/prereqs.sh first"
  docker info >/dev/null 2>&1 || die "the machine's dockerd does not answer: run scripts/prereqs.sh first"
}

# ---------------------------------------------------------------------------------------------
# network: bridge, namespaces, forwarding

ipt_rules() {   # table chain rule... (one per line, as arguments for iptables -t TABLE -X CHAIN)
  local chain=DOCKER-USER
  iptables -S DOCKER-USER >/dev/null 2>&1 || chain=FORWARD
  echo "filter $chain -i $BRIDGE -o $BRIDGE -j ACCEPT"
  echo "filter $chain -i $BRIDGE ! -o $BRIDGE -j ACCEPT"
  echo "filter $chain -o $BRIDGE -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
  echo "nat POSTROUTING -s $SUBNET ! -o $BRIDGE -j MASQUERADE"
}

net_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "creating bridge $BRIDGE ($HOST_IP/24)"
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$HOST_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  local n ns veth
  for n in "${NODES[@]}"; do
    ns=$(ns_of "$n") veth=$(veth_of "$n")
    if [ ! -e "/var/run/netns/$ns" ]; then
      say "creating namespace $ns ($(ip_of "$n"))"
      ip netns add "$ns"
    fi
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip -n "$ns" link del eth0 2>/dev/null || true
      ip link add "$veth" type veth peer name eth0 netns "$ns"
    fi
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr replace "$(ip_of "$n")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route replace default via "$HOST_IP"
  done
  local table chain rule
  while read -r table chain rule; do
    # shellcheck disable=SC2086  # the rule is a list of words
    iptables -t "$table" -C "$chain" $rule -m comment --comment "$COMMENT" 2>/dev/null ||
      iptables -t "$table" -I "$chain" 1 $rule -m comment --comment "$COMMENT"
  done < <(ipt_rules)
  for n in "${NODES[@]}"; do
    ip netns exec "$(ns_of "$n")" ping -c1 -W2 "$HOST_IP" >/dev/null 2>&1 ||
      die "$(ns_of "$n") cannot reach $HOST_IP over $BRIDGE"
  done
  ip netns exec kiln-n1 ping -c1 -W2 "$(ip_of n2)" >/dev/null 2>&1 ||
    die "kiln-n1 cannot reach kiln-n2 across $BRIDGE (iptables -S FORWARD; iptables -S DOCKER-USER)"
}

net_down() {
  local table chain rule c
  for table in filter nat; do
    for c in DOCKER-USER FORWARD POSTROUTING; do
      { iptables -t "$table" -S "$c" 2>/dev/null || true; } | { grep -- "--comment $COMMENT" || true; } |
        while read -r _ chain rule; do
          eval "iptables -t $table -D $chain $rule" 2>/dev/null || true
        done
    done
  done
  local n
  for n in "${NODES[@]}"; do
    ip link del "$(veth_of "$n")" 2>/dev/null || true
    if [ -e "/var/run/netns/$(ns_of "$n")" ]; then
      ip netns del "$(ns_of "$n")" 2>/dev/null || warn "could not delete namespace $(ns_of "$n")"
    fi
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# node dockerds

node_start() {
  local n=$1 ns dir
  ns=$(ns_of "$n") dir=$RUN/$n
  [ -e "/var/run/netns/$ns" ] || die "namespace $ns does not exist: run scripts/cluster.sh up"
  if node_up "$n"; then return 0; fi
  mkdir -p "$dir/exec" "$DATA/$n"
  # Its own bridge and gateway-bridge ranges only for readability (each namespace has its own
  # routing table, so the host's 172.17/16 would not clash); containers under the cgroup /kiln-nX;
  # its own engine key (by default every dockerd reads /etc/docker/key.json: one engine ID for all).
  cat >"$dir/daemon.json" <<EOF
{
  "bip": "172.3${n#n}.0.1/24",
  "default-address-pools": [{"base": "172.3${n#n}.0.0/16", "size": 24}],
  "cgroup-parent": "/$ns",
  "no-new-privileges": true,
  "deprecated-key-path": "$DATA/$n/key.json",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}
}
EOF
  say "starting dockerd in $ns"
  # The node's hostname comes from its own UTS namespace (unshare); the network namespace is
  # entered with nsenter --net only, so the dockerd sees the host's mounts (ip netns exec would
  # remount /sys and hide the cgroup hierarchy).
  # shellcheck disable=SC2016  # $0 and $@ are the inner sh's
  detach unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$ns" \
    nsenter --net="/var/run/netns/$ns" dockerd --config-file "$dir/daemon.json" \
    --data-root "$DATA/$n" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
    -H "unix://$dir/docker.sock" >>"$dir/dockerd.log" 2>&1
}

node_wait() {
  local n=$1
  wait_for 60 "dockerd $n" node_up "$n" ||
    { tail -n 20 "$RUN/$n/dockerd.log" >&2 || true; die "dockerd in $(ns_of "$n") did not answer within 60 s (log: $RUN/$n/dockerd.log)"; }
}

# Processes that belong to node n: its dockerd, containerd and shims (their command lines name its
# exec root) and anything in its cgroup.
node_pids() {
  local n=$1 p f
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "$RUN/$n/" && echo "${p#/proc/}"
  done
  for f in /sys/fs/cgroup/*/"$(ns_of "$n")" /sys/fs/cgroup/"$(ns_of "$n")"; do
    [ -d "$f" ] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  true
}

node_stop() {
  local n=$1 pid="" i
  [ -f "$RUN/$n/docker.pid" ] && pid=$(cat "$RUN/$n/docker.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "stopping dockerd in $(ns_of "$n") (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      warn "dockerd in $(ns_of "$n") still running after 30 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  local left
  left=$(node_pids "$n" | sort -u | tr '\n' ' ')
  if [ -n "${left// /}" ]; then
    warn "killing what is left of $(ns_of "$n"): $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$RUN/$n/docker.pid"
}

node_cgroups_remove() {
  local n=$1 f
  for f in /sys/fs/cgroup/*/"$(ns_of "$n")" /sys/fs/cgroup/"$(ns_of "$n")"; do
    [ -d "$f" ] && find "$f" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  true
}

unmount_under() {   # lazily unmount everything mounted under the given directories, deepest first
  local dir m
  for dir in "$@"; do
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || warn "could not unmount $m"; done
  done
}

# ---------------------------------------------------------------------------------------------
# registry

registry_ok() { curl -fsS --max-time 3 --cacert "$REGDIR/ca.crt" "https://$REGISTRY/v2/" >/dev/null 2>&1; }

registry_certs() {
  if [ -s "$REGDIR/server.crt" ] && [ -s "$REGDIR/ca.crt" ] &&
     openssl verify -CAfile "$REGDIR/ca.crt" "$REGDIR/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  say "generating a CA and a server certificate for $REGISTRY"
  mkdir -p "$REGDIR"
  (
    cd "$REGDIR"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.crt \
      -subj "/CN=kiln-cluster test CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=$HOST_IP" >/dev/null 2>&1
    printf 'subjectAltName=IP:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
      "$HOST_IP" >server.ext
    openssl x509 -req -sha256 -days 825 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out server.crt -extfile server.ext >/dev/null 2>&1
    chmod 644 ca.crt server.crt
  ) || die "openssl could not make the registry's certificates"
}

registry_pids() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "^/usr/bin/docker-registry serve $REGDIR/config.yml" && echo "${p#/proc/}"
  done
  true
}

registry_up() {
  registry_certs
  mkdir -p "$CERTS_D" "$REGDIR/data" "$RUN/registry"
  install -m 644 "$REGDIR/ca.crt" "$CERTS_D/ca.crt"
  if registry_ok; then return 0; fi
  local stale
  stale=$(registry_pids | tr '\n' ' ')
  # shellcheck disable=SC2086
  [ -z "${stale// /}" ] || kill -KILL $stale 2>/dev/null || true
  cat >"$REGDIR/config.yml" <<EOF
# Written by scripts/cluster.sh: no auth, delete enabled, TLS with the cluster's own CA.
version: 0.1
log:
  level: info
  fields:
    service: kiln-cluster-registry
storage:
  filesystem:
    rootdirectory: $REGDIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
  tls:
    certificate: $REGDIR/server.crt
    key: $REGDIR/server.key
  headers:
    X-Content-Type-Options: [nosniff]
EOF
  say "starting the registry on https://$REGISTRY"
  detach /usr/bin/docker-registry serve "$REGDIR/config.yml" >>"$RUN/registry/registry.log" 2>&1
  echo $! >"$RUN/registry/registry.pid"
  wait_for 30 registry registry_ok ||
    { tail -n 20 "$RUN/registry/registry.log" >&2 || true; die "the registry does not answer on https://$REGISTRY/v2/ (log: $RUN/registry/registry.log)"; }
}

registry_stop() {
  local pids
  pids=$( { cat "$RUN/registry/registry.pid" 2>/dev/null || true; registry_pids; } | sort -u | tr '\n' ' ')
  local p
  for p in $pids; do
    tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q docker-registry || continue
    say "stopping the registry (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$p" 2>/dev/null || true
  done
}

registry_down() {
  registry_stop
  rm -rf "$CERTS_D"
  rmdir /etc/docker/certs.d 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# swarm

swarm_field() { docker -H "${2:-$MANAGER_SOCK}" info --format "{{$1}}" 2>/dev/null || true; }

swarm_up() {
  local state addr
  state=$(swarm_field .Swarm.LocalNodeState) addr=$(swarm_field .Swarm.NodeAddr)
  if [ "$state" = active ] && [ "$(swarm_field .Swarm.ControlAvailable)" = true ]; then
    [ "$addr" = "$HOST_IP" ] ||
      die "this machine's dockerd already manages another swarm (advertising $addr); leave it first (docker swarm leave --force) if it is disposable"
    say "the machine's dockerd is already the manager"
  elif [ "$state" = inactive ]; then
    say "docker swarm init (manager advertises $HOST_IP)"
    docker swarm init --advertise-addr "$HOST_IP" --listen-addr "$HOST_IP:2377" >/dev/null
  elif [ "$addr" = "$HOST_IP" ]; then
    warn "the machine's dockerd is in swarm state '$state' from an earlier cluster: leaving it"
    docker swarm leave --force >/dev/null 2>&1 || true
    docker swarm init --advertise-addr "$HOST_IP" --listen-addr "$HOST_IP:2377" >/dev/null
  else
    die "this machine's dockerd is in another swarm (state $state, address $addr); leave it first if it is disposable"
  fi
  docker swarm update --dispatcher-heartbeat 1s >/dev/null
  docker node update --label-add kiln.router=true "$(swarm_field .Swarm.NodeID)" >/dev/null

  local token n id ids=("$(swarm_field .Swarm.NodeID)")
  token=$(docker swarm join-token -q worker) || die "docker swarm join-token failed on the manager"
  for n in "${NODES[@]}"; do
    id=$(swarm_field .Swarm.NodeID "$(sock_of "$n")")
    # A worker that is in no swarm, or in one whose manager no longer knows it (an earlier
    # cluster's state in its data root), joins this one.
    if [ -z "$id" ] || ! docker node inspect "$id" >/dev/null 2>&1; then
      [ -z "$id" ] || { warn "$(ns_of "$n") belongs to an earlier swarm: leaving it"; dn "$n" swarm leave --force >/dev/null 2>&1 || true; }
      say "$(ns_of "$n") joins the swarm as a worker"
      dn "$n" swarm join --token "$token" --advertise-addr "$(ip_of "$n")" \
        --listen-addr "$(ip_of "$n"):2377" "$HOST_IP:2377" >/dev/null
      id=$(swarm_field .Swarm.NodeID "$(sock_of "$n")")
    fi
    docker node update --label-add pool=web "$id" >/dev/null
    ids+=("$id")
  done
  # Nodes this manager still lists that are none of the three (left over from a node that rejoined).
  local node
  for node in $(docker node ls -q); do
    [[ " ${ids[*]} " == *" $node "* ]] || { warn "removing stale node $node"; docker node rm --force "$node" >/dev/null 2>&1 || true; }
  done
  wait_for 60 "3 Ready nodes" three_ready || { docker node ls >&2; die "the swarm does not have 3 Ready nodes after 60 s"; }
  say "swarm: 3 nodes Ready"
}

three_ready() {
  [ "$(docker node ls --format '{{.Status}}' | grep -c '^Ready$')" = 3 ] &&
    [ "$(docker node ls -q | wc -l)" = 3 ]
}

all_socks() { echo "$MANAGER_SOCK"; local n; for n in "${NODES[@]}"; do sock_of "$n"; done; }

# Services and networks named or labelled kiln-cluster* (this script's check, tests'): the services
# removed on the manager and their task containers at once on every node (swarm alone takes ~7 s
# to stop them), then the networks. With --wait, until no dockerd lists such a network any more.
cluster_objects_cleanup() {
  local host s c net out
  if [ "$(swarm_field .Swarm.ControlAvailable)" = true ]; then
    for s in $( { docker service ls --format '{{.Name}}' --filter "name=kiln-cluster";
                  docker service ls --format '{{.Name}}' --filter "label=kiln.cluster"; } | sort -u); do
      docker service rm "$s" >/dev/null 2>&1 || true
    done
  fi
  for host in $(all_socks); do
    docker -H "$host" info >/dev/null 2>&1 || continue
    c=$(docker -H "$host" ps -a --format '{{.ID}} {{.Label "com.docker.swarm.service.name"}}' 2>/dev/null |
        awk '$2 ~ /^kiln-cluster/ { print $1 }' || true)
    # shellcheck disable=SC2086
    [ -z "$c" ] || docker -H "$host" rm -f $c >/dev/null 2>&1 || true
  done
  for host in $(all_socks); do
    docker -H "$host" info >/dev/null 2>&1 || continue
    for net in $( { docker -H "$host" network ls -q --filter "name=kiln-cluster";
                    docker -H "$host" network ls -q --filter "label=kiln.cluster"; } | sort -u); do
      for _ in $(seq 40); do
        # "not found": a swarm network already removed whose local copy goes with its last task
        out=$(docker -H "$host" network rm "$net" 2>&1) && break
        [[ $out == *"not found"* || $out == *"not a swarm manager"* ]] && break
        sleep 0.25
      done
    done
  done
  [ "${1:-}" = --wait ] || return 0
  for host in $(all_socks); do
    docker -H "$host" info >/dev/null 2>&1 || continue
    wait_for 20 "networks gone" no_cluster_networks "$host" ||
      warn "$host still lists: $(docker -H "$host" network ls --filter name=kiln-cluster --format '{{.Name}}' | tr '\n' ' ')"
  done
}

no_cluster_networks() { [ -z "$(docker -H "$1" network ls -q --filter name=kiln-cluster)" ]; }

# ---------------------------------------------------------------------------------------------
# end-to-end check

probe_image() {   # a local image to push: a kiln-base with python3 if there is one
  local img best="" pk
  for img in $(docker images --format '{{.Repository}}:{{.Tag}}' kiln-base 2>/dev/null); do
    pk=$(docker image inspect --format '{{index .Config.Labels "kiln.base.packages"}}' "$img" 2>/dev/null || true)
    [[ " ${pk//,/ } " == *" python3 "* ]] && { echo "$img python"; return; }
    [ -n "$best" ] || best=$img
  done
  [ -z "$best" ] || { echo "$best plain"; return; }
  local bb
  bb=$(command -v busybox 2>/dev/null || true)
  if [ -n "$bb" ] && ! ldd "$bb" >/dev/null 2>&1; then   # static: "not a dynamic executable"
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin"
    cp "$bb" "$root/bin/busybox"
    for a in sh sleep httpd wget; do ln -s busybox "$root/bin/$a"; done
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - kiln-cluster/probe-busybox:latest >/dev/null
    rm -rf "$root"
    echo "kiln-cluster/probe-busybox:latest busybox"
  fi
}

check_task_container() {   # the check service's task container on a node (local = the manager)
  local host=$1
  docker -H "$host" ps -q --filter "label=com.docker.swarm.service.name=$CHECK" | head -n1
}

three_running() {
  [ "$(docker service ps "$CHECK" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running')" = 3 ]
}

verify() {
  local pick img kind
  pick=$(probe_image)
  if [ -z "$pick" ]; then
    warn "no kiln-base image and no static busybox here: skipping the registry and overlay checks (run 'kiln base build' first)"
    return 0
  fi
  read -r img kind <<<"$pick"
  say "pushing $img to $PROBE_REPO"
  docker tag "$img" "$PROBE_REPO:latest"
  docker push -q "$PROBE_REPO:latest" >/dev/null || die "docker push $PROBE_REPO:latest failed"
  local ref
  ref=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$PROBE_REPO:latest" |
        grep "^$PROBE_REPO@" | head -n1 || true)
  [ -n "$ref" ] || die "no digest for $PROBE_REPO after the push"
  echo "$ref" >"$RUN/probe-image"
  say "pulling $ref on kiln-n1"
  dn n1 pull -q "$ref" >/dev/null || die "kiln-n1 could not pull $ref from the registry"

  say "overlay check: a global dnsrr service on $CHECK"
  cluster_objects_cleanup --wait
  docker network create -d overlay --attachable --label kiln.cluster=check "$CHECK" >/dev/null
  local cmd=(sleep 3600)
  case $kind in
    python) cmd=(python3 -m http.server 8000) ;;
    busybox) cmd=(busybox httpd -f -p 8000 -h /) ;;
  esac
  docker service create --detach --quiet --name "$CHECK" --label kiln.cluster=check --mode global \
    --network "$CHECK" --endpoint-mode dnsrr --stop-grace-period 1s "$ref" "${cmd[@]}" >/dev/null
  wait_for 90 "3 running tasks" three_running ||
    { docker service ps --no-trunc "$CHECK" >&2; die "the check service has no 3 running tasks after 90 s"; }

  local hosts=("$MANAGER_SOCK") n h c ips=() ctrs=()
  for n in "${NODES[@]}"; do hosts+=("$(sock_of "$n")"); done
  for h in "${hosts[@]}"; do
    c=""
    for _ in $(seq 20); do c=$(check_task_container "$h"); [ -n "$c" ] && break; sleep 0.25; done
    [ -n "$c" ] || die "no running task container of $CHECK on $h"
    ctrs+=("$c")
    ips+=("$(docker -H "$h" inspect --format "{{(index .NetworkSettings.Networks \"$CHECK\").IPAddress}}" "$c")")
  done
  [ "$(printf '%s\n' "${ips[@]}" | sort -u | wc -l)" = 3 ] || die "the tasks' overlay addresses are not three distinct ones: ${ips[*]}"
  if [ "$kind" = plain ]; then
    warn "the probe image has no HTTP server: checked only that 3 tasks run with distinct overlay addresses (${ips[*]})"
  else
    local i j fetch
    for i in 0 1 2; do
      for j in 0 1 2; do
        [ "$i" = "$j" ] && continue
        if [ "$kind" = python ]; then
          fetch=(python3 -c "import sys, urllib.request; urllib.request.urlopen('http://%s:8000/' % sys.argv[1], timeout=5)" "${ips[$j]}")
        else
          fetch=(busybox wget -q -O /dev/null -T 5 "http://${ips[$j]}:8000/")
        fi
        local ok=""
        for _ in $(seq 20); do   # the service's listener may need a moment after the task is Running
          docker -H "${hosts[$i]}" exec "${ctrs[$i]}" "${fetch[@]}" >/dev/null 2>&1 && { ok=1; break; }
          sleep 0.25
        done
        [ -n "$ok" ] || die "overlay: the task on ${hosts[$i]} cannot fetch http://${ips[$j]}:8000/ (the task on ${hosts[$j]})"
      done
    done
    say "overlay: each of the 3 tasks fetched from the other two (${ips[*]})"
  fi
  cluster_objects_cleanup --wait
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
  install_prereqs
  take_lock
  say "bringing the cluster up"
  mkdir -p "$RUN" "$DATA"
  net_up
  local n
  for n in "${NODES[@]}"; do node_start "$n"; done
  registry_up
  for n in "${NODES[@]}"; do node_wait "$n"; done
  say "dockerds answer in ${NODES[*]/#/kiln-}"
  swarm_up
  verify
  say "cluster up in $(elapsed) s (registry $REGISTRY; nodes: local, ${NODES[*]/#/kiln-})"
}

cmd_down() {
  local keep=""
  [ "${1:-}" = "--keep-data" ] && keep=1
  [ "$(id -u)" = 0 ] || die "run as root"
  take_lock
  say "taking the cluster down"
  if docker info >/dev/null 2>&1; then
    cluster_objects_cleanup
  fi
  local n
  for n in "${NODES[@]}"; do
    if node_up "$n"; then
      dn "$n" swarm leave --force >/dev/null 2>&1 || true
      local cs
      cs=$(dn "$n" ps -aq 2>/dev/null || true)
      # shellcheck disable=SC2086
      [ -z "$cs" ] || dn "$n" rm -f -v $cs >/dev/null 2>&1 || true
    fi
  done
  if docker info >/dev/null 2>&1; then
    if [ "$(swarm_field .Swarm.LocalNodeState)" != inactive ]; then
      local addr
      addr=$(swarm_field .Swarm.NodeAddr)
      if [ "$addr" = "$HOST_IP" ] || [ -z "$addr" ]; then
        say "the machine's dockerd leaves the swarm"
        docker swarm leave --force >/dev/null 2>&1 || warn "docker swarm leave --force failed"
      else
        warn "the machine's dockerd is in a swarm advertising $addr, not this cluster's: left as it is"
      fi
    fi
    # swarm made docker_gwbridge on the manager; removed if nothing uses it any more
    docker network rm docker_gwbridge >/dev/null 2>&1 || true
    local ref
    for ref in $(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$PROBE_REPO:latest" 2>/dev/null | grep "^$PROBE_REPO@" || true) "$PROBE_REPO:latest"; do
      docker rmi "$ref" >/dev/null 2>&1 || true   # untags only: the kiln-base image stays
    done
  fi
  for n in "${NODES[@]}"; do node_stop "$n" & done
  wait
  registry_down
  unmount_under "${NODES[@]/#/$DATA/}" "${NODES[@]/#/$RUN/}"
  for n in "${NODES[@]}"; do node_cgroups_remove "$n"; done
  net_down
  unmount_under "$RUN" "$DATA"
  if grep -q kiln-cluster /proc/mounts; then
    die "still mounted: $(grep kiln-cluster /proc/mounts | awk '{print $2}' | tr '\n' ' ')"
  fi
  rm -rf "$RUN"
  if [ -n "$keep" ]; then
    say "kept $DATA"
  else
    rm -rf "$DATA"
  fi
  say "cluster down in $(elapsed) s"
}

cmd_status() {
  local bad=0 n
  echo "== nodes"
  if [ "$(swarm_field .Swarm.ControlAvailable)" = true ]; then
    docker node ls || bad=1
    three_ready || bad=1
  else
    local state
    state=$(swarm_field .Swarm.LocalNodeState)
    echo "the machine's dockerd is not a swarm manager (swarm: ${state:-no answer})"
    bad=1
  fi
  echo "== registry https://$REGISTRY"
  if curl -fsS --max-time 3 --cacert "$REGDIR/ca.crt" "https://$REGISTRY/v2/" >/dev/null 2>&1; then
    echo "healthy (GET /v2/ answered 200 with $REGDIR/ca.crt)"
  else
    echo "not answering"
    bad=1
  fi
  echo "== namespaces"
  for n in "${NODES[@]}"; do
    if [ -e "/var/run/netns/$(ns_of "$n")" ]; then
      if node_up "$n"; then
        echo "$(ns_of "$n") $(ip_of "$n"): dockerd pid $(cat "$RUN/$n/docker.pid" 2>/dev/null) answers on $(sock_of "$n")"
      else
        echo "$(ns_of "$n") $(ip_of "$n"): dockerd not answering"
        bad=1
      fi
    else
      echo "$(ns_of "$n"): missing"
      bad=1
    fi
  done
  return "$bad"
}

cmd_env() {
  local nodes=() n
  for n in "${NODES[@]}"; do nodes+=("$(ns_of "$n")=$(sock_of "$n")"); done
  echo "KILN_CLUSTER_REGISTRY=$REGISTRY"
  echo "KILN_CLUSTER_CA=$CERTS_D/ca.crt"
  echo "KILN_CLUSTER_MANAGER=$MANAGER_SOCK"
  echo "KILN_CLUSTER_NODES=\"${nodes[*]}\""
  [ -s "$RUN/probe-image" ] && echo "KILN_CLUSTER_PROBE_IMAGE=$(cat "$RUN/probe-image")"
  true
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  node-stop)
    [ -n "${2:-}" ] || die "usage: $0 node-stop NAME"
    n=$(short "$2"); take_lock; node_stop "$n"; say "dockerd in $(ns_of "$n") stopped" ;;
  node-start)
    [ -n "${2:-}" ] || die "usage: $0 node-start NAME"
    n=$(short "$2"); take_lock; node_start "$n"; node_wait "$n"; say "dockerd in $(ns_of "$n") answers" ;;
  registry-stop) take_lock; registry_stop; say "the registry is stopped (an outage, for tests)" ;;
  registry-start) take_lock; registry_up; say "the registry answers on https://$REGISTRY" ;;
  *) echo "usage: $0 up | down [--keep-data] | status | env | node-stop NAME | node-start NAME | registry-stop | registry-start" >&2; exit 2 ;;
esac
