#!/bin/bash
# Kiln appliance init: PID 1 of the throwaway VM that runs one customisation job
# (docs/isolation.md). The appliance's own root is read-only; the image being
# customised is the disk with serial kiln-target, the job (a tar of one-value
# files, see job.py) the disk with serial kiln-job. Every result goes to ttyS1 as
# "KILN ..." lines (protocol.py parses them); ttyS0 is the kernel's console.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
R=/run/kiln/root  # where the image's root is mounted
J=/run/kiln/job

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs tmp /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mkdir -p $R $J
stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null
exec 3>/dev/ttyS1
printf 'KILN READY %s\n' "$(uname -r)" >&3

say() { printf 'KILN %s\n' "$*" >&3; }
power_off() {
	sync
	echo o >/proc/sysrq-trigger
	sleep 30
}
die() {
	say "DONE FAIL $*"
	undo_chroot
	power_off
	exit 1
}

disk_with_serial() {
	local d
	for d in /sys/block/vd*; do
		[ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
	done
	return 1
}

. /usr/local/lib/kiln/findroot.sh

# The image's root: the partition the job names, else by findroot.sh's rule.
find_root() {
	local disk=$1 dev
	if [ -s $J/root ]; then  # a partition number, or "whole"
		dev=$(cat $J/root)
		if [ "$dev" = whole ]; then echo "$disk"; else echo "$disk$dev"; fi
		return 0
	fi
	find_root_on "$disk"
}

mount_fstab() {
	local src mp type opts rest dev
	[ -f $R/etc/fstab ] || return 0
	while read -r src mp type opts rest; do
		case "$src" in '' | '#'*) continue ;; esac
		case "$mp" in / | none | swap | '') continue ;; esac
		case "$type" in ext2 | ext3 | ext4 | xfs | vfat | btrfs) ;; *) continue ;; esac
		dev=$(findfs "$src" 2>/dev/null) || { say "INFO fstab: $src for $mp not found, left unmounted"; continue; }
		# A mount point through a link, or with .., would land outside the image.
		case "$(realpath -m "$R$mp")/" in "$R"/*) ;; *)
			say "INFO fstab: $mp leads outside the image, left unmounted"
			continue
			;;
		esac
		mount -t "$type" "$dev" "$R$mp" && echo "$R$mp" >>/run/kiln/image-mounts &&
			say "INFO mounted $dev on $mp"
	done <$R/etc/fstab
}

CHROOTED=0
prepare_chroot() {
	mount --bind /dev $R/dev && mount -t devpts devpts $R/dev/pts
	mount -t proc proc $R/proc
	mount -t sysfs sys $R/sys
	mount -t tmpfs -o mode=1777 tmp $R/tmp
	mount -t tmpfs -o mode=0755 run $R/run
	# The mirror names reach the host's relays (see network.py); the image's
	# own hosts file is covered, never changed.
	[ -e $R/etc/hosts ] || { : >$R/etc/hosts && touch $R/run/kiln-made-hosts; }
	cat $R/etc/hosts $J/hosts >/run/kiln/hosts 2>/dev/null
	mount --bind /run/kiln/hosts $R/etc/hosts
	if [ -e $R/usr/sbin/policy-rc.d ]; then mv $R/usr/sbin/policy-rc.d /run/kiln/policy-rc.d.image; fi
	printf '#!/bin/sh\n# Kiln: no service starts while the image is being built.\nexit 101\n' >$R/usr/sbin/policy-rc.d
	chmod 755 $R/usr/sbin/policy-rc.d
	CHROOTED=1
}

# The chroot's own mounts go, the image's stay mounted (for the export).
unbind() {
	[ $CHROOTED = 1 ] || return 0
	rm -f $R/usr/sbin/policy-rc.d
	[ -e /run/kiln/policy-rc.d.image ] && mv /run/kiln/policy-rc.d.image $R/usr/sbin/policy-rc.d
	local made=0
	[ -e $R/run/kiln-made-hosts ] && made=1
	umount -R $R/etc/hosts $R/run $R/tmp $R/sys $R/proc $R/dev 2>/dev/null
	[ $made = 1 ] && rm -f $R/etc/hosts
	CHROOTED=0
}

undo_chroot() {
	unbind
	mountpoint -q $R || return 0
	umount -R $R || say "INFO unmounting the image failed"
	sync
}

in_image() {
	chroot $R /usr/bin/env -i PATH=$PATH HOME=/root LANG=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$(cat $J/epoch)" "$@"
}

# Whether the image says it is (or is like) $1, by its own os-release.
image_is() {
	in_image /bin/sh -c '. /etc/os-release 2>/dev/null || . /usr/lib/os-release 2>/dev/null
		for id in $ID $ID_LIKE; do [ "$id" = "$1" ] && exit 0; done; exit 1' sh "$1"
}

do_packages() {
	local dir=$1 list=$1/packages
	# Package names differ by distro: the host cannot read the image to choose.
	if [ -s "$dir/packages-ubuntu" ] && image_is ubuntu; then list=$dir/packages-ubuntu; fi
	in_image apt-get update -q || return
	in_image apt-get install -y -q --no-install-recommends $(cat "$list") || return
	in_image apt-get clean
}

do_sysprep() {
	cp /usr/local/lib/kiln/sysprep.sh $R/tmp/kiln-sysprep.sh || return
	in_image /bin/sh /tmp/kiln-sysprep.sh $(cat "$1/operations")
	local rc=$?
	rm -f $R/tmp/kiln-sysprep.sh
	return $rc
}

# Grows the root partition (the disk's last) and its filesystem to the disk the
# host made bigger; an XFS grows once mounted (grow_mounted).
grow_root() {
	local disk=$1 root=$2 type part last label
	type=$(blkid -o value -s TYPE "$root")
	if [ "$root" != "$disk" ]; then
		part=${root#"$disk"}
		last=$(ls -d /sys/block/${disk##*/}/${disk##*/}* | sed 's/.*[^0-9]//' | sort -n | tail -1)
		[ "$part" = "$last" ] || {
			echo "disk.size: the root is partition $part, not the last one; Kiln can only grow the last partition"
			return 1
		}
		label=$(sfdisk --dump "$disk" | sed -n 's/^label: //p')
		[ "$label" = gpt ] && { sfdisk --relocate gpt-bak-std "$disk" || return; }
		echo ", +" | sfdisk --quiet --no-reread -N "$part" "$disk" || return
		partx -u "$disk" || blockdev --rereadpt "$disk" || return
		udevadm settle 2>/dev/null
	fi
	case "$type" in
	ext2 | ext3 | ext4)
		e2fsck -f -p "$root"
		[ $? -le 1 ] || return 1
		resize2fs "$root" || return
		;;
	esac
	say "INFO grew the image's root ($type on $root) to the disk"
}

grow_mounted() {
	[ "$(blkid -o value -s TYPE "$1")" = xfs ] || return 0
	xfs_growfs $R >/dev/null || return
	say "INFO grew the image's root (xfs on $1) to the disk"
}

# Unmounts (deepest first) whatever is mounted under the image but its own
# filesystems (a step, root in the VM, may have mounted /proc or /dev there).
foreign_mounts_gone() {
	local mp
	for mp in $(awk '{print $2}' /proc/mounts | sort -r); do
		case "$mp/" in "$R"/*) ;; *) continue ;; esac
		grep -qxF "$mp" /run/kiln/image-mounts && continue
		umount "$mp" 2>/dev/null || umount -l "$mp" || return 1
		say "INFO unmounted $mp, which a step left mounted"
	done
}

# The tree (or the paths the job names) as a tar on the disk kiln-out: the host
# reads it as bytes and never mounts the image.
export_tree() {
	local out paths
	out=$(disk_with_serial kiln-out) || { echo "no export disk"; return 1; }
	mapfile -t paths <$J/export
	tar -C $R --numeric-owner --xattrs --xattrs-include='*' --acls --exclude=./lost+found \
		--ignore-failed-read -cf "$out" -- "${paths[@]}"
	[ $? -le 1 ] || return 1  # 1: a file changed while read (logs), not fatal
	sync
	say "INFO handed the tree back ($(printf '%s ' "${paths[@]}"))"
}

do_file() {
	local dir=$1 path
	path=$(cat "$dir/path")
	if [ -L "$R$path" ] || [ -d "$R$path" ]; then
		echo "files: $path is a symlink or directory in the image"
		return 1
	fi
	cp "$dir/data" $R/tmp/kiln-file
	in_image install -D -m "$(cat "$dir/mode")" -o "$(cat "$dir/owner")" -g "$(cat "$dir/group")" \
		/tmp/kiln-file "$path"
	local rc=$?
	rm -f $R/tmp/kiln-file
	return $rc
}

do_run() {
	local dir=$1
	cp "$dir/script" $R/tmp/kiln-script && chmod 0755 $R/tmp/kiln-script
	# A script runs with the interpreter its #! line names, else /bin/sh -e.
	if [ "$(head -c 2 $R/tmp/kiln-script)" = '#!' ]; then
		in_image /tmp/kiln-script
	else
		in_image /bin/sh -e /tmp/kiln-script
	fi
}

run_step() {
	local dir=$1 n kind name rc
	n=${dir##*/}
	kind=$(cat "$dir/kind")
	name=$(cat "$dir/name")
	say "STEP $n START $name"
	"do_$kind" "$dir" </dev/null 2>&1 | while IFS= read -r line; do
		printf 'KILN LOG %s %s\n' "$n" "$line" >&3
	done
	rc=${PIPESTATUS[0]}
	if [ "$rc" = 0 ]; then say "STEP $n OK"; else say "STEP $n FAIL $rc"; fi
	return "$rc"
}

# No udev: the NIC's driver is loaded by hand; filesystems load as mount asks.
modprobe -q virtio_net
ip link set lo up
ip link set eth0 up 2>/dev/null && ip addr add 10.0.2.15/24 dev eth0 &&
	ip route add default via 10.0.2.2

job_disk=$(disk_with_serial kiln-job) || die "no job disk"
tar -xf "$job_disk" -C $J || die "the job disk holds no readable job"
target=$(disk_with_serial kiln-target) || die "no image disk"
root=$(find_root "$target") || die "no Linux root filesystem ($ROOT_TYPES holding one of $ROOT_MARKS) on the image: $(blkid "$target"* 2>&1 | tr '\n' ' ')"
if [ -s $J/grow ]; then
	why=$(grow_root "$target" "$root" 2>&1) || die "growing the image failed: $(echo "$why" | tail -3 | tr '\n' ' ')"
fi
mount "$root" $R || die "cannot mount the image's root $root"
echo "$R" >/run/kiln/image-mounts
say "ROOT $root $(blkid -o value -s TYPE "$root")"
if [ -s $J/grow ]; then grow_mounted "$root" || die "growing the image's XFS failed"; fi
mount_fstab
prepare_chroot

for dir in $(ls -d $J/steps/* 2>/dev/null); do
	run_step "$dir" || die "step $(cat "$dir/name") failed"
done
# Whatever a step started in the image is stopped before its files are read
# (PID 1 survives kill -1), then the chroot's mounts go, and any a step made:
# only the image's own filesystems are handed back.
kill -KILL -1 2>/dev/null
sleep 0.2
unbind
foreign_mounts_gone || die "a mount made by a step could not be removed"
if [ -s $J/export ]; then
	why=$(export_tree 2>&1) || die "handing the tree back failed: $(echo "$why" | tail -3 | tr '\n' ' ')"
fi
undo_chroot
say "DONE OK"
power_off
