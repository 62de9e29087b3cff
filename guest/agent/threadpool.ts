// Imported first by main.ts, so it runs before any other module of the bundle.
//
// libuv sizes its thread pool on first use. One thread stays blocked in read(2) on the agent port
// for as long as a host is connected, so give file I/O a few more.
process.env.UV_THREADPOOL_SIZE ??= '6';

/** Process uptime (ms) when the bundle began to run: node's own start-up ends here. */
export const bundleStartedAfterMs = Math.round(process.uptime() * 1000);
