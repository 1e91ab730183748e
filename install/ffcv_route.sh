#!/bin/sh
# How `make` installs ffcv, printed as one word:
#   sdist  pip builds ffcv's sdist against Debian's OpenCV and libturbojpeg development
#          packages: only as root with all of them installed (the path verified first);
#   wheel  `make ffcv-wheel` builds a self-contained wheel without root or apt installs
#          (install/build_ffcv_wheel.py), which pip then installs.
# Usage: sh install/ffcv_route.sh PACKAGE...   (the packages the sdist build needs)
[ "$(id -u)" = 0 ] || { echo wheel; exit 0; }
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || { echo wheel; exit 0; }
done
echo sdist
