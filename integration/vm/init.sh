#!/bin/busybox sh
# /init of the IPVS test VM. Loads the modules, runs /payload/run.sh (written by
# vmexec: the test binary with its arguments) and reports its exit code on the serial
# console between markers that vmexec parses, then powers off.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /run
mount -t tmpfs tmp /tmp
mkdir -p /run/netns /var
ln -s /run /var/run
while read -r m; do insmod "$m" 2>/dev/null || echo "init: insmod $m failed"; done </etc/modules.order
ip link set lo up
cd /payload
echo "@@KUBAL-VM-BEGIN@@"
if [ -f /payload/run.sh ]; then
	sh /payload/run.sh
	rc=$?
else
	echo "init: no /payload/run.sh"
	rc=125
fi
echo "@@KUBAL-VM-END rc=$rc@@"
poweroff -f
