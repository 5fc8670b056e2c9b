"""Remote and emulated devices: TVM RPC sessions, servers and the emulated aarch64 sysroot."""
