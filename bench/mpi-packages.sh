# Sourced by the benchmarks that run Open MPI through mpi4py (compare-mpi.sh, node-sum.sh): installs
# openmpi-bin, python3-mpi4py and python3-numpy from Debian where they are missing (they are for
# Debian's /usr/bin/python3).
missing=()
for package in openmpi-bin python3-mpi4py python3-numpy; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
