#!/usr/bin/env bash
# Runs a small etcd cluster on loopback for the state-store tests: plain HTTP (or TLS with client
# certificates, --tls), no auth, short election timeouts, one data directory and log per member
# under a directory the caller owns.
#
#   scripts/etcd-cluster.sh start DIR [--members N] [--base-port P] [--host IP] [--tls]
#       Starts N members (default 3). Member i listens for clients on IP:(P + 2i) (IP: 127.0.0.1
#       unless given, e.g. a veth address that a network namespace reaches) and for
#       peers on 127.0.0.1:(P + 2i + 1); P defaults to 23790. Writes DIR/endpoints (host:port,
#       comma separated) and DIR/pids (one pid a line, member 0 first), waits until the cluster
#       has a leader and every member answers `etcdctl endpoint health`, and prints the
#       endpoints on stdout.
#       With --tls, it first makes a throwaway CA with openssl and, signed by it, a server
#       certificate for IP (and 127.0.0.1) and a client certificate, all in DIR/tls: ca.crt,
#       server.crt, server.key, client.crt and client.key (keys 0600). Clients then speak TLS and
#       must show a certificate from that CA (--client-cert-auth); peers stay on plain loopback.
#   scripts/etcd-cluster.sh stop DIR           TERM to each member in turn, KILL to any left after 10 s.
#                                              DIR and its data stay.
#   scripts/etcd-cluster.sh kill DIR INDEX     KILL member INDEX (0-based), as a crash would.
#   scripts/etcd-cluster.sh restart DIR INDEX  Starts member INDEX again on its data directory and
#                                              waits until it is healthy.
#   scripts/etcd-cluster.sh restart DIR all    Starts every member not running again, together, and
#                                              waits until the cluster is healthy (after `stop`).
#   scripts/etcd-cluster.sh rotate DIR         For a cluster started with --tls: makes a new CA and,
#                                              signed by it, new server and client certificates,
#                                              each renamed over its file in DIR/tls (as a PKI
#                                              rotation does). Members take them at their next
#                                              start: stop, then restart DIR all.
#
# The wait gives up after RINGMASTER_ETCD_WAIT_S seconds (default 20), naming what it waited for and
# showing the end of each member's log. Member logs are DIR/member<i>.log; data is DIR/member<i>.
# Needs etcd and etcdctl (etcd-server and etcd-client, which scripts/setup.sh installs). Where
# systemd runs, that package also starts a system etcd on 127.0.0.1:2379; the ports here avoid it.
set -euo pipefail

wait_s="${RINGMASTER_ETCD_WAIT_S:-20}"
stop_wait_s=10

usage() {
    echo "usage: $0 start DIR [--members N] [--base-port P] [--host IP] [--tls] | stop DIR | kill DIR INDEX | restart DIR INDEX|all | rotate DIR" >&2
    exit 2
}

fail() {
    echo "etcd-cluster: $*" >&2
    exit 1
}

# MARK: - Cluster layout

# Reads DIR/config, written by `start`, so that later commands use the same members and ports.
load_config() {
    [ -f "$dir/config" ] || fail "$dir/config not found: start a cluster in $dir first"
    # shellcheck source=/dev/null
    . "$dir/config"
    client_host="${client_host:-127.0.0.1}"
    tls="${tls:-0}"
}

# The scheme of the client URLs.
client_scheme() { if [ "$tls" = 1 ]; then echo https; else echo http; fi; }

# etcdctl's TLS flags, one a line, for a cluster started with --tls.
etcdctl_tls() {
    [ "$tls" = 1 ] || return 0
    printf '%s\n' --cacert "$dir/tls/ca.crt" --cert "$dir/tls/client.crt" --key "$dir/tls/client.key"
}

# Makes DIR/tls (or the directory given): a CA, and signed by it a server certificate for the
# client host and loopback and a client certificate (ECDSA P-256, valid 2 days: they are for one
# test run).
make_certificates() {
    local out="${1:-$dir/tls}"
    command -v openssl >/dev/null || fail "--tls needs openssl (Debian package openssl)"
    mkdir -p "$out"
    (
        umask 077
        openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key" &&
        openssl req -x509 -new -key "$out/ca.key" -sha256 -days 2 -subj "/CN=ringmaster-test-etcd-ca" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$out/ca.crt" &&
        for role in server client; do
            openssl ecparam -name prime256v1 -genkey -noout -out "$out/$role.key" &&
            openssl req -new -key "$out/$role.key" -subj "/CN=ringmaster-test-etcd-$role" -out "$out/$role.csr" &&
            if [ "$role" = server ]; then
                printf 'subjectAltName=IP:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' "$client_host"
            else
                printf 'extendedKeyUsage=clientAuth\n'
            fi >"$out/$role.ext" &&
            openssl x509 -req -in "$out/$role.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
                -sha256 -days 2 -extfile "$out/$role.ext" -out "$out/$role.crt" || exit 1
        done
    ) >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; fail "openssl could not make the certificates in $out"; }
    chmod 644 "$out/ca.crt" "$out/server.crt" "$out/client.crt"
}

# A new CA and certificates, made beside DIR/tls and renamed over its files one by one.
rotate() {
    load_config
    [ "$tls" = 1 ] || fail "the cluster in $dir was started without --tls: there are no certificates to rotate"
    local fresh="$dir/tls.rotating" name
    rm -rf "$fresh"
    make_certificates "$fresh"
    for name in ca.key ca.crt server.key server.crt client.key client.crt; do
        mv -f "$fresh/$name" "$dir/tls/$name"
    done
    rm -rf "$fresh"
}

client_port() { echo $((base_port + 2 * $1)); }
peer_port() { echo $((base_port + 2 * $1 + 1)); }

endpoint_list() {
    local i list=""
    for ((i = 0; i < members; i++)); do
        list+="${list:+,}$client_host:$(client_port "$i")"
    done
    echo "$list"
}

initial_cluster() {
    local i list=""
    for ((i = 0; i < members; i++)); do
        list+="${list:+,}member$i=http://127.0.0.1:$(peer_port "$i")"
    done
    echo "$list"
}

check_index() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -lt "$members" ] ||
        fail "no member $1: the cluster in $dir has members 0 to $((members - 1))"
}

# MARK: - Member processes

# The pid recorded for member $1, or nothing.
member_pid() {
    sed -n "$(($1 + 1))p" "$dir/pids" 2>/dev/null
}

# True when the recorded pid is still this member's etcd: not exited, not a zombie (whose cmdline
# is empty and whose ports are already free), not a reused pid.
member_alive() {
    local pid
    pid="$(member_pid "$1")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
        { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "--data-dir $dir/member$1 "
}

# Replaces member $1's line in DIR/pids with pid $2.
record_pid() {
    awk -v line="$(($1 + 1))" -v pid="$2" 'NR == line { $0 = pid } { print }' "$dir/pids" >"$dir/pids.new"
    mv "$dir/pids.new" "$dir/pids"
}

# Polls until member $1 has exited; returns 1 if it is still running at second $2 of $SECONDS.
wait_exit() {
    while member_alive "$1"; do
        [ "$SECONDS" -lt "$2" ] || return 1
        sleep 0.05
    done
}

port_in_use() {
    (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# Closes the descriptors above 2 that this shell inherited.
close_inherited() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd="${fd##*/}"
        [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    return 0
}

# Starts member $1 in the background with the flags every start of it uses; $2 is
# --initial-cluster-state (`new` on the first start; etcd ignores it once the data dir exists).
launch_member() {
    local i="$1" state="$2" port
    for port in "$(client_port "$i")" "$(peer_port "$i")"; do
        port_in_use "$port" && fail "port $port (member $i) is already in use; pick another --base-port"
    done
    # etcd 3.4 runs on arm64 only when told to.
    if [ "$(uname -m)" = aarch64 ]; then export ETCD_UNSUPPORTED_ARCH=arm64; fi
    # In a subshell that closes every descriptor above 2 first: a caller's pipes inherited by a
    # member would stay open as long as it runs, and a caller waiting for their end would hang.
    (
        close_inherited
        local security=()
        if [ "$tls" = 1 ]; then
            security=(--cert-file "$dir/tls/server.crt" --key-file "$dir/tls/server.key"
                --client-cert-auth --trusted-ca-file "$dir/tls/ca.crt")
        fi
        exec etcd --name "member$i" \
        --data-dir "$dir/member$i" \
        --listen-client-urls "$(client_scheme)://$client_host:$(client_port "$i")" \
        --advertise-client-urls "$(client_scheme)://$client_host:$(client_port "$i")" \
        "${security[@]}" \
        --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
        --initial-cluster "$(initial_cluster)" \
        --initial-cluster-token "$cluster_token" \
        --initial-cluster-state "$state" \
        --heartbeat-interval 100 \
        --election-timeout 1000 \
        --quota-backend-bytes $((256 * 1024 * 1024)) \
        --logger zap --log-outputs stderr \
        </dev/null >>"$dir/member$i.log" 2>&1
    ) &
    echo $!
}

# MARK: - Waiting

show_logs() {
    local i
    for ((i = 0; i < members; i++)); do
        echo "etcd-cluster: --- last lines of $dir/member$i.log ---" >&2
        tail -n 15 "$dir/member$i.log" >&2 2>/dev/null || true
    done
}

# Polls until the members named in $@ are healthy (which needs a leader) and report a leader.
# Returns 1 after explaining what it waited for when a member exits or the deadline passes.
wait_healthy() {
    local endpoints="" i deadline health="(no health check finished)" status=""
    for i in "$@"; do endpoints+="${endpoints:+,}$(client_scheme)://$client_host:$(client_port "$i")"; done
    local security
    mapfile -t security < <(etcdctl_tls)
    deadline=$((SECONDS + wait_s))
    while [ "$SECONDS" -lt "$deadline" ]; do
        for i in "$@"; do
            if ! member_alive "$i"; then
                show_logs
                echo "etcd-cluster: member $i exited while starting (see its log above)" >&2
                return 1
            fi
        done
        if health="$(etcdctl --endpoints "$endpoints" "${security[@]}" --dial-timeout 1s --command-timeout 2s \
            endpoint health 2>&1)" &&
            status="$(etcdctl --endpoints "$endpoints" "${security[@]}" --dial-timeout 1s --command-timeout 2s \
                -w json endpoint status 2>/dev/null)" &&
            [[ "$status" =~ \"leader\":[1-9] ]]; then
            return 0
        fi
        sleep 0.2
    done
    echo "etcd-cluster: after ${wait_s} s, members $* at $endpoints were not all healthy with a leader." >&2
    echo "etcd-cluster: last health check said:" >&2
    echo "$health" | sed 's/^/    /' >&2
    show_logs
    echo "etcd-cluster: cluster in $dir did not become healthy (set RINGMASTER_ETCD_WAIT_S to wait longer)" >&2
    return 1
}

# MARK: - Commands

start() {
    members=3
    base_port=23790
    client_host=127.0.0.1
    tls=0
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --members) [ "$#" -ge 2 ] || usage; members="$2"; shift 2 ;;
            --base-port) [ "$#" -ge 2 ] || usage; base_port="$2"; shift 2 ;;
            --host) [ "$#" -ge 2 ] || usage; client_host="$2"; shift 2 ;;
            --tls) tls=1; shift ;;
            *) usage ;;
        esac
    done
    [[ "$members" =~ ^[1-9][0-9]*$ ]] || fail "--members must be a positive number, not $members"
    [[ "$base_port" =~ ^[0-9]+$ ]] && [ "$base_port" -ge 1024 ] && [ $((base_port + 2 * members)) -le 65536 ] ||
        fail "--base-port must leave room for $((2 * members)) ports between 1024 and 65535, not $base_port"
    command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
        fail "etcd and etcdctl not found: run scripts/setup.sh (packages etcd-server, etcd-client)"

    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local i pid
    if [ -f "$dir/pids" ]; then
        for ((i = 0; i < $(wc -l <"$dir/pids"); i++)); do
            member_alive "$i" && fail "a cluster is already running in $dir: stop it first"
        done
    fi
    [ ! -e "$dir/member0" ] || fail "$dir already holds member data: use an empty directory, or restart"
    cluster_token="ringmaster-test-$$-$RANDOM"
    [[ "$client_host" =~ ^[0-9.]+$ ]] || fail "--host must be an IPv4 address of this machine, not $client_host"
    printf 'members=%s\nbase_port=%s\nclient_host=%s\ncluster_token=%s\ntls=%s\n' "$members" "$base_port" \
        "$client_host" "$cluster_token" "$tls" >"$dir/config"
    if [ "$tls" = 1 ]; then make_certificates; fi

    # One line per member from the start, so that a failed start can still stop what it began.
    for ((i = 0; i < members; i++)); do echo; done >"$dir/pids"
    endpoint_list >"$dir/endpoints"
    for ((i = 0; i < members; i++)); do
        pid="$(launch_member "$i" new)" || { stop; exit 1; }
        record_pid "$i" "$pid"
    done
    # shellcheck disable=SC2046 # the member indices are words on purpose
    wait_healthy $(seq 0 $((members - 1))) || { stop; exit 1; }
    cat "$dir/endpoints"
}

stop() {
    load_config
    # One member at a time: a leader given TERM hands leadership to a live peer first, and when
    # every member gets TERM at once they hand it back and forth until etcd's 7 s request
    # timeout. One by one, each hand-over is quick and the last member has no one to hand to.
    local i deadline
    deadline=$((SECONDS + stop_wait_s))
    for ((i = 0; i < members; i++)); do
        member_alive "$i" || continue
        kill -TERM "$(member_pid "$i")" 2>/dev/null || true
        wait_exit "$i" "$deadline" || true
    done
    for ((i = 0; i < members; i++)); do
        if member_alive "$i"; then
            echo "etcd-cluster: member $i still running ${stop_wait_s} s after TERM; sending KILL" >&2
            kill -KILL "$(member_pid "$i")" 2>/dev/null || true
            wait_exit "$i" $((SECONDS + stop_wait_s)) || fail "member $i survived KILL"
        fi
    done
}

kill_member() {
    load_config
    check_index "$1"
    member_alive "$1" || fail "member $1 is not running"
    kill -KILL "$(member_pid "$1")"
    # Returning once it is gone means its ports are free for a restart.
    wait_exit "$1" $((SECONDS + stop_wait_s)) || fail "member $1 still running ${stop_wait_s} s after KILL"
}

# Starts every member that is not running again, together (a lone member of a stopped cluster
# cannot become healthy without a quorum), and waits until the whole cluster is.
restart_all() {
    load_config
    local i pid
    for ((i = 0; i < members; i++)); do
        member_alive "$i" && continue
        [ -d "$dir/member$i" ] || fail "member $i has no data directory in $dir"
        pid="$(launch_member "$i" existing)"
        record_pid "$i" "$pid"
    done
    # shellcheck disable=SC2046 # the member indices are words on purpose
    wait_healthy $(seq 0 $((members - 1))) || { stop; exit 1; }
}

restart_member() {
    [ "$1" = all ] && { restart_all; return; }
    load_config
    check_index "$1"
    member_alive "$1" && fail "member $1 is still running; kill it first"
    [ -d "$dir/member$1" ] || fail "member $1 has no data directory in $dir"
    local pid
    pid="$(launch_member "$1" existing)"
    record_pid "$1" "$pid"
    if ! wait_healthy "$1"; then
        if member_alive "$1"; then kill_member "$1"; fi
        exit 1
    fi
}

# MARK: - Main

[ "$#" -ge 2 ] || usage
command="$1"
dir="$2"
shift 2
if [ "$command" != start ]; then
    [ -d "$dir" ] || fail "no directory $dir"
    dir="$(cd "$dir" && pwd)"
fi
case "$command" in
    start) start "$@" ;;
    stop) [ "$#" -eq 0 ] || usage; stop ;;
    kill) [ "$#" -eq 1 ] || usage; kill_member "$1" ;;
    restart) [ "$#" -eq 1 ] || usage; restart_member "$1" ;;
    rotate) [ "$#" -eq 0 ] || usage; rotate ;;
    *) usage ;;
esac
