#!/usr/bin/env bash
# Install the real tools the tests compare against (Debian packages), only when missing.
set -euo pipefail
need=()
# `install-tools.sh build`: only what building the C extensions needs (OpenSSL's headers for
# the EVP AES-XTS module). Without them the package still installs, with the slower XTS path.
if [ "${1:-}" = "build" ]; then
  [ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
else
  command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
  command -v cryptsetup >/dev/null 2>&1 || [ -x /sbin/cryptsetup ] || need+=(cryptsetup-bin)
  command -v grub-fstest >/dev/null 2>&1 || need+=(grub-common)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  # The block-device tests make loop devices, partitions and file systems.
  command -v losetup >/dev/null 2>&1 || need+=(mount)
  command -v partx >/dev/null 2>&1 || need+=(util-linux)
  command -v mke2fs >/dev/null 2>&1 || [ -x /sbin/mke2fs ] || need+=(e2fsprogs)
  command -v qemu-nbd >/dev/null 2>&1 || need+=(qemu-utils)
  # make bench: GNU time reports a command's own peak RSS and CPU time.
  [ -x /usr/bin/time ] || need+=(time)
  # imgcrypt catalogue's distributed mode: a Redis jobboard and a MariaDB for flow state.
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
  [ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
