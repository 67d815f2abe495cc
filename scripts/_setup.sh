# Shared by scripts/test and scripts/demo: idempotent installation steps.

# ensure_system_packages PKG...: install Debian packages whose binaries are missing.
ensure_system_packages() {
  local missing=()
  for pkg in "$@"; do
    case "$pkg" in
      mosquitto) command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto) ;;
      prometheus) { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus) ;;
      *) dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing system packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # The Debian packages try to start their services; there is no init system here and
  # the tests start their own servers on free loopback ports, so that failure is harmless.
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv SPEC: create ./.venv if needed and install the project with SPEC's extras.
ensure_venv() {
  local spec="$1"
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
  local stamp=".venv/.installed-$(echo "$spec" | tr -c 'a-z' '_')"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing na64-daq ($spec) into .venv"
    python -m pip install -q --upgrade pip >/dev/null
    python -m pip install -q -e "$spec"
    touch "$stamp"
  fi
}
