#!/usr/bin/env bash
# A distributed run over two "hosts" on this machine: two network
# namespaces joined by a veth pair, each with its own address, one rank in
# each, started the way a user starts a run on two machines:
#
#   host A: moekit launch --nodes 2 --node-rank 0 --master-addr A --master-port P -n 1 -- WORKER
#   host B: moekit launch --nodes 2 --node-rank 1 --master-addr A --master-port P -n 1 -- WORKER
#
# WORKER is the test binary's DistWorker.Run with the "collectives" and the
# expert-parallel "ep_dropless" scenarios (tests/test_dist.cpp); the script
# checks what each rank wrote. The namespaces are removed on exit.
#
# Usage: scripts/test_two_hosts.sh MOEKIT MOEKIT_TESTS
# Exit 77 (a skip for CTest) without root or iproute2's `ip netns`.
set -euo pipefail
moekit="$1"
tests="$2"
if [[ $(id -u) -ne 0 ]] || ! command -v ip > /dev/null || ! ip netns add moekit_probe_$$ 2> /dev/null; then
  echo "skipped: needs root and iproute2 network namespaces (ip netns)"
  exit 77
fi
ip netns del moekit_probe_$$
a="moekit_a_$$"
b="moekit_b_$$"
out=$(mktemp -d)
cleanup() {
  ip netns del "$a" 2> /dev/null || true
  ip netns del "$b" 2> /dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
ip netns add "$a"
ip netns add "$b"
ip link add veth_a netns "$a" type veth peer name veth_b netns "$b"
ip -n "$a" addr add 10.213.0.1/24 dev veth_a
ip -n "$b" addr add 10.213.0.2/24 dev veth_b
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set veth_a up
ip -n "$b" link set veth_b up

status=0
for scenario in collectives ep_dropless; do
  mkdir -p "$out/$scenario"
  common=(--nodes 2 --master-addr 10.213.0.1 --master-port 29731 -n 1 --grace 5)
  worker=(env MOEKIT_DIST_SCENARIO="$scenario" MOEKIT_DIST_OUT="$out/$scenario" MOEKIT_DIST_TIMEOUT_MS=30000
          OMP_NUM_THREADS=1 "$tests" --gtest_filter=DistWorker.Run)
  ip netns exec "$a" env GLOO_SOCKET_IFNAME=veth_a "$moekit" launch --node-rank 0 "${common[@]}" -- "${worker[@]}" \
    > "$out/$scenario/a.log" 2>&1 &
  pid_a=$!
  ip netns exec "$b" env GLOO_SOCKET_IFNAME=veth_b "$moekit" launch --node-rank 1 "${common[@]}" -- "${worker[@]}" \
    > "$out/$scenario/b.log" 2>&1 || status=1
  wait "$pid_a" || status=1
  for rank in 0 1; do
    if [[ ! -s "$out/$scenario/rank$rank.safetensors" ]]; then
      echo "two hosts, $scenario: rank $rank wrote no result"
      status=1
    fi
  done
  if [[ $status -ne 0 ]]; then
    echo "--- host A"; cat "$out/$scenario/a.log"; echo "--- host B"; cat "$out/$scenario/b.log"
    exit 1
  fi
  echo "two hosts, $scenario: both ranks finished"
done
