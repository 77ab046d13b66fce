# Shared by .ci/run and scripts/demo (sourced, not run): what a fresh Debian machine lacks
# for building Tandem and running PostgreSQL, and how to install it.

# PostgreSQL server binaries live off PATH on Debian, so look where Tandem looks.
have_initdb() {
    if [[ -n "${PG_BIN:-}" && -x "${PG_BIN}/initdb" ]]; then return 0; fi
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# pg_query (the SQL parser the proxy classifies with) builds libpg_query through bindgen,
# which needs libclang.
have_libclang() {
    # libclang-cpp (installed with other LLVM tools) is not the C library bindgen loads.
    compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*' >/dev/null
}

# Debian packages for building and running Tandem that are missing here (printed one a line).
missing_build_packages() {
    if ! have_initdb; then echo postgresql; echo postgresql-contrib; fi
    if ! have_libclang; then echo libclang-dev; fi
}

# apt-get install "$@" (after apt-get update) as root; otherwise print the command and fail.
install_packages() {
    (($#)) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing Debian packages: $*" >&2
        echo "install them with: sudo apt-get update && sudo apt-get install -y $*" >&2
        return 1
    fi
    echo "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "$@"
}

# Puts rustup's cargo on PATH when the shell has not.
find_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
        export PATH="${HOME:-/root}/.cargo/bin:${PATH}"
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "cargo not found: install Rust from https://rustup.rs" >&2
        return 1
    }
}
