# The test venv with moto, for the bench scripts that run it; sourced from the repository root.
# Sets $venv and $py, or exits saying how to prepare it.
venv="${KURA_VENV:-$PWD/.venv}"
if [ ! -x "$venv/bin/moto_server" ]; then
    echo "no moto in $venv: run scripts/test once (it prepares the venv) or set KURA_VENV" >&2
    exit 2
fi
py="$venv/bin/python"
