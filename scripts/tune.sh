#!/usr/bin/env bash
# Kernel settings for holding ~1M connections on one box (see kernel-tuning.md for why each).
# Idempotent: prints each key with its old and new value, changes only what differs.
#   scripts/tune.sh            apply now (root), not persistent
#   PERSIST=1 scripts/tune.sh  also write /etc/sysctl.d/90-ringpost.conf
#   DRY_RUN=1 scripts/tune.sh  only show what would change
set -euo pipefail

SETTINGS=(
  "fs.nr_open=2097152"
  "fs.file-max=4194304"
  "net.core.somaxconn=65535"
  "net.ipv4.tcp_max_syn_backlog=65535"
  "net.core.netdev_max_backlog=65536"
  "net.ipv4.ip_local_port_range=1024 65535"
  "net.ipv4.tcp_rmem=4096 16384 6291456"
  "net.ipv4.tcp_wmem=4096 16384 4194304"
  "net.ipv4.tcp_tw_reuse=1"
  "net.netfilter.nf_conntrack_max=2097152"
)

dry=${DRY_RUN:-0}
if [[ $dry != 1 && $(id -u) != 0 ]]; then
  echo "tune: needs root to change sysctls; run 'sudo make tune' (or DRY_RUN=1 to preview)" >&2
  dry=1
  status=1
else
  status=0
fi

norm() { tr -s ' \t' ' ' <<<"$1" | sed 's/^ //; s/ $//'; }
persist=()
for kv in "${SETTINGS[@]}"; do
  key=${kv%%=*}
  want=$(norm "${kv#*=}")
  path=/proc/sys/${key//.//}
  if [[ ! -e $path ]]; then
    printf '%-40s absent here (module not loaded), skipped\n' "$key"
    continue
  fi
  old=$(norm "$(cat "$path")")
  persist+=("$key = $want")
  if [[ $old == "$want" ]]; then
    printf '%-40s %s (unchanged)\n' "$key" "$old"
  elif [[ $dry == 1 ]]; then
    printf '%-40s %s -> %s (would change)\n' "$key" "$old" "$want"
  else
    sysctl -q -w "$key=$want"
    printf '%-40s %s -> %s\n' "$key" "$old" "$want"
  fi
done

if [[ ${PERSIST:-0} == 1 && $dry != 1 ]]; then
  printf '%s\n' "# written by ringpost scripts/tune.sh" "${persist[@]}" > /etc/sysctl.d/90-ringpost.conf
  echo "persisted to /etc/sysctl.d/90-ringpost.conf"
fi

# Per-process limits are not sysctls: they belong to the shell or service that starts the
# broker and the load generator.
nofile_hard=$(ulimit -Hn)
memlock=$(ulimit -l)
echo "limits of this shell: nofile soft $(ulimit -n) hard $nofile_hard, memlock $memlock"
if [[ $nofile_hard != unlimited && $nofile_hard -lt 1048576 ]]; then
  echo "  raise open files before starting ringpost: 'ulimit -n 1100000' (as root), or"
  echo "  LimitNOFILE=1100000 in its systemd unit; the hard limit is capped by fs.nr_open."
fi
if [[ $memlock != unlimited && $memlock -lt 65536 ]]; then
  echo "  io_uring rings need locked memory on kernels before 5.12: 'ulimit -l unlimited'"
  echo "  or LimitMEMLOCK=infinity (ringpost names this at start if it is the problem)."
fi
if pgrep -x irqbalance >/dev/null 2>&1; then
  echo "irqbalance is running: for a NIC-facing broker, pin the NIC queues' IRQs away from the"
  echo "  broker's shard cores or onto them one queue per core (kernel-tuning.md, 'CPU and IRQs')."
fi
exit $status
