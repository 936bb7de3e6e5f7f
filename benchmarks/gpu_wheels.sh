#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before benchmarks/gpu_check.sh: downloads into .whl/ the
# wheels of era5latent's dependencies that the lent GPU machine's image lacks (it has torch,
# numpy, xarray, pandas, pyarrow, typer, rich, safetensors, tensorboard, matplotlib, h5py, ...;
# see the device tool's KINDS.md). Python 3.12, manylinux x86_64. .whl/ is git-ignored and
# travels with `run(carry=[".whl"])`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PKGS="zarr numcodecs donfig crc32c google-crc32c zarrs dask distributed cloudpickle partd locket
toolz zict tblib cfgrib eccodes eccodeslib eckitlib findlibs h5netcdf zfpy==1.0.1 pysz"
plat=()
for n in 17 24 27 28 31 34 35; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
for p in $PKGS; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" --platform manylinux2014_x86_64 -d .whl "$p" ||
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$p"
done
du -sh .whl
