# Sourced by the device scripts (device_train.sh, device_table.sh) after setting PY: installs the
# packages the device image lacks from the carried wheels (.whl/deps) and points mvector's cache at
# the carried one (.whl/cache: the simulated RIR bank, as pyroomacoustics is absent there).
if ! "$PY" -c "import soundfile, soxr" 2>/dev/null && compgen -G ".whl/deps/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps .whl/deps/*.whl
fi
export MVECTOR_CACHE=${MVECTOR_CACHE:-$PWD/.whl/cache} PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15
