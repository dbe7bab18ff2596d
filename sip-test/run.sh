#!/usr/bin/env bash
# Runs one flashverify SIPp scenario by name, with logs in a fresh directory.
#
#   sip-test/run.sh <scenario> [options] [-- extra sipp args]
#
#   uas-*   far end: listens on --host:--port (default 127.0.0.1:5060, the
#           engine's default trunk uri sip:127.0.0.1:5060) and plays the
#           scenario for --calls calls.
#   uac-*   caller: sends --calls calls at --rate calls/s to --target
#           (default 127.0.0.1:5060) from --host (and --port, if given).
#
# Options:
#   --port N            local port (uas default 5060; uac default: any free)
#   --host IP           local address (default 127.0.0.1)
#   --transport udp|tcp (default udp; SIPp -t u1 / -t t1)
#   --calls N           calls before exiting (-m; default 1; 0 = no limit)
#   --rate R            calls per second for uac-* (-r; default 1)
#   --target HOST:PORT  where uac-* sends (default 127.0.0.1:5060)
#   --service NUMBER    Request-URI user for uac-* (-s; default 79161234567)
#   --auth USER:PASS    digest credentials for uac-* (-au/-ap; uac-challenge
#                       defaults to trunkuser:trunkpass)
#   --set NAME VALUE    scenario variable (repeatable), e.g. --set ring_ms 500,
#                       --set cli 74950001234, --set hold_ms 4000
#   --timeout SECONDS   stop SIPp after this long (exit 255), default none
#   --logs DIR          log directory (default $TMPDIR/flashverify-sipp/<scenario>-<time>)
#
# Exit code is SIPp's (3.6.1): 0 all calls succeeded, 1 some failed (or a
# --set SIPp refused, before any call), 97 stopped by an internal command,
# 99 no call processed, 254 the SIP port in use, 255 other fatal errors or
# --timeout hit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
  echo "Scenarios:"
  for f in "$here"/*.xml; do echo "  $(basename "$f" .xml)"; done
}

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then usage; exit 2; fi
name="${1%.xml}"; shift
scenario="$here/$name.xml"
[[ -f "$scenario" ]] || { echo "run.sh: no scenario $scenario" >&2; usage >&2; exit 2; }
command -v sipp >/dev/null || { echo "run.sh: sipp not found in PATH" >&2; exit 2; }

port=""; host="127.0.0.1"; transport="udp"; calls=1; rate=""; target="127.0.0.1:5060"
service="79161234567"; auth=""; timeout=""; logs=""; sets=(); extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --transport) transport="$2"; shift 2 ;;
    --calls) calls="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    --service) service="$2"; shift 2 ;;
    --auth) auth="$2"; shift 2 ;;
    --set) sets+=(-set "$2" "$3"); shift 3 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$transport" in
  udp) t=u1 ;;
  tcp) t=t1 ;;
  *) echo "run.sh: --transport must be udp or tcp" >&2; exit 2 ;;
esac

logs="${logs:-${TMPDIR:-/tmp}/flashverify-sipp/$name-$(date +%Y%m%d-%H%M%S)-$$}"
mkdir -p "$logs"

args=(-sf "$scenario" -t "$t" -i "$host" -mi "$host" -ci "$host"
      -trace_msg -message_file "$logs/messages.log"
      -trace_err -error_file "$logs/errors.log"
      -trace_screen -screen_file "$logs/screen.log"
      -trace_logs -log_file "$logs/actions.log")
[[ "$calls" != 0 ]] && args+=(-m "$calls")
[[ -n "$timeout" ]] && args+=(-timeout "${timeout}s" -timeout_error)
# no keyboard when not interactive (CI, background jobs)
[[ -t 0 ]] || args+=(-nostdin)

case "$name" in
  uas-*)
    args+=(-p "${port:-5060}")
    role="far end (UAS) on $host:${port:-5060}/$transport"
    ;;
  uac-*)
    [[ -n "$port" ]] && args+=(-p "$port")
    args+=(-s "$service" -r "${rate:-1}")
    if [[ -z "$auth" && "$name" == "uac-challenge" ]]; then auth="trunkuser:trunkpass"; fi
    [[ -n "$auth" ]] && args+=(-au "${auth%%:*}" -ap "${auth#*:}")
    role="caller (UAC) to $target/$transport"
    ;;
  *) echo "run.sh: scenario names start with uas- or uac-" >&2; exit 2 ;;
esac
args+=(${sets[@]+"${sets[@]}"} ${extra[@]+"${extra[@]}"})
[[ "$name" == uac-* ]] && args+=("$target")

echo "run.sh: $name as $role, $calls call(s)"
echo "run.sh: logs in $logs"
printf '%q ' sipp "${args[@]}" > "$logs/command.txt"; echo >> "$logs/command.txt"
set +e
sipp "${args[@]}"
rc=$?
set -e
case $rc in
  0) what="all calls succeeded" ;;
  1) what="at least one call failed, or sipp refused an argument before any call (see errors.log and the lines above)" ;;
  97) what="stopped by an internal command" ;;
  99) what="no call processed" ;;
  254) what="the SIP port is in use" ;;
  *) what="fatal error or timeout (see errors.log)" ;;
esac
echo "run.sh: sipp exit $rc: $what"
echo "run.sh: messages $logs/messages.log, errors $logs/errors.log, screen $logs/screen.log"
exit $rc
