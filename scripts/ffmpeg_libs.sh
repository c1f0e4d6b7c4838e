#!/usr/bin/env bash
# FFmpeg's shared libraries, which torchcodec (the default video decoder) loads at import.
#   scripts/ffmpeg_libs.sh          install Debian's FFmpeg libraries if none is found (root only)
#   scripts/ffmpeg_libs.sh status   exit 0 when they are found
# PyAV brings its own copy of FFmpeg in its wheel; torchcodec uses the system's (FFmpeg 4 to 7).
# Without root nothing is installed: torchcodec then fails with an install hint and data.decoder=pyav works.
set -uo pipefail
found() { ldconfig -p 2>/dev/null | grep -qE 'libavcodec\.so\.(58|59|60|61)\b'; }
case "${1:-install}" in
  status) found ;;
  install)
    if found; then exit 0; fi
    if [ "$(id -u)" != 0 ]; then
      echo "scripts/ffmpeg_libs.sh: FFmpeg's libraries are missing and this is not root; as root run: apt-get install ffmpeg" >&2
      exit 0
    fi
    echo "installing FFmpeg's shared libraries (for torchcodec)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavfilter8 libavdevice59 >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null ;;
  *) echo "usage: $0 [install|status]" >&2; exit 2 ;;
esac
