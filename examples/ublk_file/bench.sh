#!/bin/sh
# examples/ublk_file vs examples/nbd_server on the same backing file: fio 4 KiB
# randread/randwrite at QD1 and QD32 (libaio, O_DIRECT) on /dev/ublkb0 and on
# /dev/nbd0 (the kernel NBD client on the server's unix socket). The backing
# file (512 MiB, written once) is on ext4 on a brd ramdisk, so both daemons
# serve it from page cache: what differs is the transport, not the disk.
#
# Runs in the VM (the host has no ublk), as root, with release builds of both
# daemons copied in (vm-run's own copies on PATH are debug builds):
#   cargo build --release -p ublk_file && cargo build --release --example nbd_server
#   T=${CARGO_TARGET_DIR:-target}
#   cargo xtask vm-run --kernel 6.12 --mem 2G --modules brd,nbd,ublk_drv \
#     --host-bin fio --host-bin nbd-client --host-bin mkfs.ext4 \
#     --file $T/release/ublk_file:/opt/files/ublk_file \
#     --file $T/release/examples/nbd_server:/opt/files/nbd_server \
#     -- examples/ublk_file/bench.sh
# ROUNDS (default 3) interleaved rounds; RUNTIME (default 10) seconds per cell.
set -e
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
UBLK=/opt/files/ublk_file; [ -x $UBLK ] || UBLK=ublk_file
NBD=/opt/files/nbd_server; [ -x $NBD ] || NBD=nbd_server
modprobe brd rd_nr=1 rd_size=$((640 * 1024))
modprobe nbd
modprobe ublk_drv
B=/mnt/ublk-bench
mkdir -p $B
mkfs.ext4 -q -F /dev/ram0
mount -t ext4 /dev/ram0 $B
dd if=/dev/urandom of=$B/disk.img bs=1M count=512 status=none
sync
$UBLK --file $B/disk.img 2>$B/ublk.log &
UPID=$!
$NBD --file $B/disk.img --listen none --unix /run/bench-nbd.sock --quiet 2>$B/nbd.log &
NPID=$!
for i in $(seq 200); do
  grep -q " as /dev/ublkb" $B/ublk.log && [ -S /run/bench-nbd.sock ] && break
  sleep 0.1
done
UDEV=$(sed -n 's/.* as \(\/dev\/ublkb[0-9]*\).*/\1/p' $B/ublk.log)
[ -b "$UDEV" ] || { cat $B/ublk.log; exit 1; }
nbd-client -unix /run/bench-nbd.sock /dev/nbd0 -N disk -b 4096 >/dev/null
echo "kernel $(uname -r), $(nproc) CPUs, daemons $UBLK $NBD; ublk_file on $UDEV, nbd_server on /dev/nbd0; fio libaio O_DIRECT 4 KiB, ${RUNTIME} s per cell"
cell() { # dev rw qd -> IOPS
  fio --name=b --filename=$1 --rw=$2 --bs=4k --iodepth=$3 --ioengine=libaio --direct=1 \
      --runtime=$RUNTIME --time_based --norandommap --randrepeat=0 \
      --output-format=terse --terse-version=3 \
  | awk -F';' -v rw=$2 '{ if (rw ~ /write/) print $49; else print $8 }'
}
for round in $(seq $ROUNDS); do
  for w in "randread 1" "randread 32" "randwrite 1" "randwrite 32"; do
    set -- $w
    u=$(cell $UDEV $1 $2)
    n=$(cell /dev/nbd0 $1 $2)
    echo "round $round $1 QD$2 ublk=$u nbd=$n ublk/nbd=$(awk "BEGIN { printf \"%.2f\", $u / $n }")"
  done
done
nbd-client -d /dev/nbd0 >/dev/null
kill -TERM $UPID $NPID
wait $UPID
wait $NPID
tail -2 $B/ublk.log
umount $B
