#!/usr/bin/env bash
# teecast over veth pairs between network namespaces: a second view next to bench/run.py's loopback.
#
# Loopback flatters zero-copy and hides the costs of a network device. Here the sender runs in its
# own namespace `tcb-send`, every receiver (`teecast drain`, which splices the socket into
# /dev/null) in its own namespace `tcb-rN`, joined to the sender by one veth pair each:
#
#   tcb-send: vsI 10.77.I.1/30  <-- veth -->  tcb-rI: vrI 10.77.I.2/30   (I = 1..max N)
#
# Contenders (bare bytes into the drains, no framing): teecast send --raw with the strategies
# readwrite, read-pipe, direct and zerocopy (not stable), and mbuffer -s 1M -m 64M. The contenders
# alternate inside each round; every run starts fresh receivers. Figures per contender and N:
# median wall seconds (sender start until the sender and every receiver have exited), GB/s per
# destination (size / wall, 10^9 bytes) and sender CPU seconds (user + system) per GiB delivered.
#
# Usage (root): bench/veth.sh [--size-mib M] [--rounds R] [--ns "1 2 4"] [--digest D] [--fq]
#   --digest D  digest teecast computes while sending (default none, like mbuffer)
#   --fq        put the fq qdisc on the sender's side of every veth pair
# The namespaces, veth pairs, receivers and the source file are removed at exit, whatever happens.
set -euo pipefail

SIZE_MIB=1024
ROUNDS=3
NS_LIST="1 2 4"
DIGEST=none
FQ=0
RUN_TIMEOUT=120 # seconds any one sender or receiver may take

while [ $# -gt 0 ]; do
    case "$1" in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --ns) NS_LIST=$2; shift 2 ;;
        --digest) DIGEST=$2; shift 2 ;;
        --fq) FQ=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "veth.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "veth.sh: needs root (network namespaces)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
BIN=$PWD/target/release/teecast
SRC=/dev/shm/tcb-veth-src
WORK=$(mktemp -d /tmp/tcb-veth.XXXXXX)
MAX_N=0
for n in $NS_LIST; do [ "$n" -gt "$MAX_N" ] && MAX_N=$n; done
if [ "$MAX_N" -lt 1 ] || [ "$MAX_N" -gt 200 ]; then
    echo "veth.sh: N must be within 1..200" >&2
    exit 2
fi

PIDS=()
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for i in $(seq 1 "$MAX_N"); do ip netns del "tcb-r$i" 2>/dev/null || true; done
    ip netns del tcb-send 2>/dev/null || true
    rm -f "$SRC"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { # command, package
    command -v "$1" >/dev/null 2>&1 && return 0
    apt-get install -y "$2" >/dev/null 2>&1 || true
    command -v "$1" >/dev/null 2>&1
}
need mbuffer mbuffer || { echo "veth.sh: mbuffer missing and not installable" >&2; exit 1; }
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null 2>&1 || true
[ -x /usr/bin/time ] || { echo "veth.sh: /usr/bin/time missing and not installable" >&2; exit 1; }
HAVE_ETHTOOL=0
need ethtool ethtool && HAVE_ETHTOOL=1

echo "== build" >&2
cargo build --release >&2

echo "== source: $SIZE_MIB MiB of random bytes on $SRC" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$SRC"
SIZE=$(stat -c %s "$SRC")

echo "== namespaces: tcb-send and tcb-r1..tcb-r$MAX_N" >&2
for i in $(seq 1 "$MAX_N"); do ip netns del "tcb-r$i" 2>/dev/null || true; done
ip netns del tcb-send 2>/dev/null || true
ip netns add tcb-send
ip -n tcb-send link set lo up
for i in $(seq 1 "$MAX_N"); do
    ip netns add "tcb-r$i"
    ip -n "tcb-r$i" link set lo up
    ip link add "vs$i" netns tcb-send type veth peer name "vr$i" netns "tcb-r$i"
    ip -n tcb-send addr add "10.77.$i.1/30" dev "vs$i"
    ip -n "tcb-r$i" addr add "10.77.$i.2/30" dev "vr$i"
    ip -n tcb-send link set "vs$i" up
    ip -n "tcb-r$i" link set "vr$i" up
    if [ "$FQ" -eq 1 ] && ! ip netns exec tcb-send tc qdisc replace dev "vs$i" root fq 2>/dev/null; then
        echo "veth.sh: the fq qdisc is not available in this kernel; vs$i keeps its default" >&2
    fi
done

QDISC=$(ip netns exec tcb-send tc qdisc show dev vs1 | head -1)
MTU=$(ip -n tcb-send -o link show vs1 | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
OFFLOADS="(ethtool not available)"
if [ "$HAVE_ETHTOOL" -eq 1 ]; then
    OFFLOADS=$(ip netns exec tcb-send ethtool -k vs1 |
        grep -E '^(scatter-gather|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload|tx-checksumming):' |
        sed 's/: /=/' | tr '\n' ' ')
fi
echo "veth vs1: mtu $MTU; qdisc: $QDISC; offloads: $OFFLOADS" >&2

# Contender labels and their sender commands (destinations appended at run time).
LABELS=("teecast readwrite" "teecast read-pipe" "teecast direct" "teecast zerocopy (not stable)" "mbuffer -s 1M -m 64M")
sender_cmd() { # label index, N; fills CMD
    local k=$1 n=$2 i
    CMD=()
    case $k in
        0) CMD=("$BIN" send --raw --quiet --strategy readwrite --digest "$DIGEST" "$SRC") ;;
        1) CMD=("$BIN" send --raw --quiet --strategy read-pipe --digest "$DIGEST" "$SRC") ;;
        2) CMD=("$BIN" send --raw --quiet --strategy direct --digest "$DIGEST" "$SRC") ;;
        3) CMD=("$BIN" send --raw --quiet --strategy zerocopy --digest "$DIGEST" "$SRC") ;;
        4) CMD=(mbuffer -q -i "$SRC" -s 1M -m 64M) ;;
    esac
    for i in $(seq 1 "$n"); do
        if [ "$k" -eq 4 ]; then CMD+=(-O "10.77.$i.2:7000"); else CMD+=("10.77.$i.2:7000"); fi
    done
}

# One run: fresh drains, the sender under /usr/bin/time; appends "label N wall user sys" to RESULTS.
RESULTS=$WORK/results
: >"$RESULTS"
run_one() { # label index, N, round
    local k=$1 n=$2 r=$3 i t0 t1 ok=1 line bytes
    local dir=$WORK/run-$k-$n-$r
    mkdir -p "$dir"
    PIDS=()
    for i in $(seq 1 "$n"); do
        timeout "$RUN_TIMEOUT" ip netns exec "tcb-r$i" "$BIN" drain --listen "10.77.$i.2:7000" --count 1 \
            >"$dir/drain$i.out" 2>"$dir/drain$i.err" &
        PIDS+=($!)
    done
    for i in $(seq 1 "$n"); do # wait (at most 10 s) until each drain listens
        local tries=0
        until grep -q "teecast: listening on" "$dir/drain$i.err" 2>/dev/null; do
            tries=$((tries + 1))
            if [ "$tries" -gt 200 ]; then
                echo "veth.sh: drain $i did not start: $(cat "$dir/drain$i.err")" >&2
                return 1
            fi
            sleep 0.05
        done
    done
    sender_cmd "$k" "$n"
    t0=$(date +%s.%N)
    if ! timeout "$RUN_TIMEOUT" /usr/bin/time -f "%e %U %S" -o "$dir/time" \
        ip netns exec tcb-send "${CMD[@]}" >"$dir/send.out" 2>"$dir/send.err"; then
        echo "veth.sh: ${LABELS[$k]} N=$n failed: $(tail -3 "$dir/send.err")" >&2
        ok=0
    fi
    for i in "${!PIDS[@]}"; do wait "${PIDS[$i]}" || ok=0; done
    t1=$(date +%s.%N)
    PIDS=()
    for i in $(seq 1 "$n"); do
        line=$(cat "$dir/drain$i.out")
        bytes=${line##* }
        if [ "$bytes" != "$SIZE" ]; then
            echo "veth.sh: ${LABELS[$k]} N=$n: receiver $i got '$bytes' bytes, expected $SIZE" >&2
            ok=0
        fi
    done
    [ "$ok" -eq 1 ] || return 1
    local wall user sys
    read -r _ user sys < <(tail -1 "$dir/time")
    wall=$(echo "$t1 - $t0" | bc -l)
    echo "$k $n $wall $user $sys" >>"$RESULTS"
    printf '  N=%s round %s %-30s wall %6.2f s  user %5.2f  sys %5.2f\n' "$n" "$r" "${LABELS[$k]}" "$wall" "$user" "$sys" >&2
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
FAILED=0
for n in $NS_LIST; do
    for r in $(seq 1 "$ROUNDS"); do
        # Alternate: each round starts one contender further along.
        for j in "${!LABELS[@]}"; do
            k=$(((j + r - 1) % ${#LABELS[@]}))
            run_one "$k" "$n" "$r" || FAILED=$((FAILED + 1))
        done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "- Date: $START; teecast $(git rev-parse --short HEAD 2>/dev/null || echo '?'); kernel $(uname -r); nproc $(nproc)"
echo "- Source: $SIZE_MIB MiB random on /dev/shm; rounds: $ROUNDS; N: $NS_LIST; teecast --digest $DIGEST"
echo "- veth (sender side): mtu $MTU; qdisc: $QDISC"
echo "- Offloads: $OFFLOADS"
echo "- Load average before: $LOAD_BEFORE; after: $LOAD_AFTER; failed runs: $FAILED"
echo
echo "| contender | N | wall s | GB/s per destination | sender CPU s/GiB |"
echo "|---|---:|---:|---:|---:|"
for n in $NS_LIST; do
    for k in "${!LABELS[@]}"; do
        rows=$(awk -v k="$k" -v n="$n" '$1 == k && $2 == n' "$RESULTS")
        [ -n "$rows" ] || { echo "| ${LABELS[$k]} | $n | failed | | |"; continue; }
        wall=$(echo "$rows" | awk '{print $3}' | median)
        cpu=$(echo "$rows" | awk -v s="$SIZE" -v n="$n" '{print ($4 + $5) / (s * n / 1073741824)}' | median)
        lo=$(echo "$rows" | awk '{print $3}' | sort -g | head -1)
        hi=$(echo "$rows" | awk '{print $3}' | sort -g | tail -1)
        printf '| %s | %s | %.2f (%.2f–%.2f) | %.2f | %.2f |\n' "${LABELS[$k]}" "$n" "$wall" "$lo" "$hi" \
            "$(echo "$SIZE / $wall / 1000000000" | bc -l)" "$cpu"
    done
done
[ "$FAILED" -eq 0 ]
