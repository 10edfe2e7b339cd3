# Shared shell helpers for scripts that run kvbridge servers on loopback (deploy/demo.sh,
# tests/agent/families_e2e.sh). Source it after setting `work` (a scratch directory) and
# `pids=()`; call `trap cleanup EXIT`.

# Stops every server started by `start` and removes $work.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# start NAME CMD...: starts a server on a free port; its address goes into the variable NAME.
# Its stdout/stderr go to $work/NAME.out / $work/NAME.log.
start() {
  local name=$1
  shift
  "$@" --listen 127.0.0.1:0 >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  local addr=""
  for _ in $(seq 400); do
    # The child creates $name.out: until it has, there is nothing to read (and no error under set -e).
    addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/$name.out" 2>/dev/null || true)
    [[ -n $addr ]] && break
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  [[ -n $addr ]] || { echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
  printf -v "$name" '%s' "$addr"
}

# field KEY FILE: the value of KEY=... in the last summary line of FILE.
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" "$2" | tail -n 1; }
