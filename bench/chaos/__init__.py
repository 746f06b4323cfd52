"""The parts of `ragyard bench chaos` and of the reliability tests: a TCP fault proxy, a redis-server with
its append-only file, a store writer to kill, the bad-input battery and the scenarios that use them."""
