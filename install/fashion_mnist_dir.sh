#!/bin/sh
# Prints the folder holding Fashion-MNIST's idx files for `make demo`: the Debian package
# dataset-fashion-mnist's when installed, else that package fetched with `apt-get download`
# and unpacked with `dpkg -x` under build/debian (no root needed; ~30 MB, once).
# Usage: sh install/fashion_mnist_dir.sh [INSTALLED_DIR]
set -e
dir="${1:-/usr/share/datasets/fashion-mnist}"
if [ -d "$dir" ]; then echo "$dir"; exit 0; fi
root="$PWD/build/debian/fashion-mnist"
if [ ! -d "$root/usr/share/datasets/fashion-mnist" ]; then
  mkdir -p build/debian
  (cd build/debian && apt-get download dataset-fashion-mnist >&2)
  dpkg -x build/debian/dataset-fashion-mnist_*.deb "$root"
fi
echo "$root/usr/share/datasets/fashion-mnist"
