# Kiln's root discovery for the appliance, sourced by init.sh: the same rule as
# kiln_builder/rootfs.py (tests/unit/test_root_rule_lists.py compares the lists,
# tests/integration/test_root_discovery.py the answers). The partitions in
# number order, then the whole disk; the first whose filesystem is one of
# ROOT_TYPES and that holds one of ROOT_MARKS as a regular file, reached
# through directories, no link on the way.
# Mounts at $R, read-only, and leaves nothing mounted.
ROOT_TYPES="ext4 ext3 ext2 xfs"
ROOT_MARKS="etc/os-release usr/lib/os-release etc/fstab"

# The partitions of disk $1 (/dev/vda, /dev/loop3), by number.
partitions_of() {
	local name=${1##*/} part
	for part in /sys/block/$name/$name*; do
		[ -r "$part/partition" ] && echo "$(cat "$part/partition") /dev/${part##*/}"
	done | sort -n | cut -d' ' -f2
}

# Whether $R/$1 is a regular file, and each directory on its way a directory,
# no link among them.
plain_file() {
	local rest=$1 prefix=""
	while case $rest in */*) true ;; *) false ;; esac; do
		prefix=${prefix:+$prefix/}${rest%%/*}
		rest=${rest#*/}
		if [ -L "$R/$prefix" ] || [ ! -d "$R/$prefix" ]; then return 1; fi
	done
	[ -f "$R/$1" ] && [ ! -L "$R/$1" ]
}

# Whether $1 holds a root: one of ROOT_TYPES, a mark inside.
holds_root() {
	local dev=$1 type opts mark found=1
	type=$(blkid -p -o value -s TYPE "$dev" 2>/dev/null)
	[ -n "$type" ] || return 1
	case " $ROOT_TYPES " in *" $type "*) ;; *) return 1 ;; esac
	# Reading must not replay a journal, which would write the image.
	case "$type" in xfs) opts=ro,norecovery,nouuid ;; ext2) opts=ro ;; *) opts=ro,noload ;; esac
	mount -o "$opts" -t "$type" "$dev" "$R" 2>/dev/null || return 1
	for mark in $ROOT_MARKS; do
		if plain_file "$mark"; then found=0; break; fi
	done
	umount "$R"
	return $found
}

# The device holding disk $1's root, printed; fails if there is none.
find_root_on() {
	local dev
	for dev in $(partitions_of "$1") "$1"; do
		if holds_root "$dev"; then echo "$dev"; return 0; fi
	done
	return 1
}
