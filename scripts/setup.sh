#!/usr/bin/env bash
# Installs what building, booting and testing ros needs on a fresh Debian 12 machine, and only
# what is missing: QEMU for both arches (--no-install-recommends: a newer qemu-utils is
# preinstalled on these machines and its recommends clash), dnsmasq and iproute2 for the DHCP
# tests, cpio to cross-check the image writer, erofs-utils for the service images, the OpenSSH
# client for the login tests, busybox-static for the runtime root tests (a static busybox is
# copied into their bundles), crun and runc for the runtime benchmark, genisoimage, dosfstools
# and mtools for the NoCloud config drive tests (ISO9660 and vfat), chrony as the NTP server
# the time test asks (run by the test, never as the host's clock service), Go to build the OCI
# validation suite (scripts/conformance), podman to drive ros-runtime as an engine would,
# docker-registry (distribution 2.8), skopeo, htpasswd and zstd for the registry tests, etcd-server
# (3.4) for the cluster store's comparison (`ros-bench store`), tmux to type into `kubectl exec -it`,
# the musl targets, cargo-nextest, the
# Python kubernetes client (a venv under target/). The kernel and the services' Debian packages are fetched by `ros-image build`
# into target/ros-cache.
set -euo pipefail

need=()
for pair in qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm \
            cpio:cpio dnsmasq:dnsmasq-base ip:iproute2 dpkg-deb:dpkg mkfs.erofs:erofs-utils \
            ssh:openssh-client ssh-keygen:openssh-client crun:crun runc:runc \
            genisoimage:genisoimage mkfs.vfat:dosfstools mcopy:mtools chronyd:chrony \
            go:golang-go podman:podman docker-registry:docker-registry skopeo:skopeo \
            htpasswd:apache2-utils zstd:zstd etcd:etcd-server tmux:tmux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
  need+=(busybox-static)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

installed=$(rustup target list --installed)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked

# The official Python Kubernetes client for the cluster's API tests (crates/ros-kube/tests), in a
# venv under target/ so that CI's cache keeps it.
venv="$(dirname "$0")/../target/venv-kube"
if ! "$venv/bin/python" -c 'import kubernetes' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes==37.0.2
fi
