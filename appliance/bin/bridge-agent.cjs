#!/usr/bin/env node
// The agent's command. CommonJS on purpose: libuv sizes its thread pool when the first task is queued,
// which an ES module entry already does while it loads, so only code that runs before the ES entry
// can raise it. FUSE requests, file devices and store uploads (fsync-bound) all run on that pool;
// its default of 4 threads serializes them (store bench: 7.3-8.1 s vs 4.9-5.3 s to stored at load 8).
process.env.UV_THREADPOOL_SIZE ??= '32';
import('../../dist/appliance/src/cli.js');
