#!/bin/sh
# examples/fuse_passthrough vs the bare source directory (same ext4), fio psync QD1.
# Reads: the source file is in page cache on both sides; on the mount fio's
# --invalidate=1 drops the FUSE page cache so every read goes to the daemon.
set -e
# Usage (root, fio installed): cargo build --release --example fuse_passthrough &&
#   sh examples/fuse_passthrough/bench.sh
B=${B:-/tmp/fusebench}; rm -rf $B; mkdir -p $B/src $B/mnt
fuse_passthrough=${FP:-target/release/examples/fuse_passthrough}
$fuse_passthrough --source $B/src --mountpoint $B/mnt 2>$B/daemon.log &
DPID=$!
for i in $(seq 50); do grep -q " $B/mnt " /proc/mounts && break; sleep 0.1; done
run() { # dir name rw bs size extra
  fio --name=$2 --directory=$1 --filename=f-$2 --rw=$3 --bs=$4 --size=$5 --ioengine=psync \
      --iodepth=1 --output-format=terse --terse-version=3 $6 \
  | awk -F';' -v n=$2 '{ if (n ~ /write/) print $48; else print $7 }'
}
# The read jobs' files, written once and read once: warm on both sides.
for f in seqread:256M randread:1G; do
  fio --name=${f%%:*} --directory=$B/src --filename=f-${f%%:*} --rw=write --bs=1M \
      --size=${f##*:} --output-format=terse >/dev/null
  cat $B/src/f-${f%%:*} >/dev/null
done
for round in $(seq ${ROUNDS:-3}); do
  for w in "seqwrite write 1M 256M --end_fsync=1" "seqread read 1M 256M" \
           "randwrite randwrite 4k 256M --runtime=8 --time_based" \
           "randread randread 4k 1G --runtime=8 --time_based"; do
    set -- $w
    bare=$(run $B/src $1 $2 $3 $4 "--invalidate=0 $5 $6")
    fuse=$(run $B/mnt $1 $2 $3 $4 "--invalidate=1 $5 $6")
    echo "$round $1 bare=${bare}KiB/s fuse=${fuse}KiB/s ratio=$(awk "BEGIN { printf \"%.2f\", $fuse / $bare }")"
  done
done
kill -TERM $DPID; wait $DPID || true
grep -q " $B/mnt " /proc/mounts && umount -l $B/mnt
rm -rf $B
