// Worker entry of hw/remote.ts: register the TypeScript loader, then run the worker.
// (Node 20 does not pass loaders on to worker threads.) A failure to load is reported the way
// the worker reports its own (home state W_FAILED = 3, the message on its port), since the main
// thread waits on shared words, not on events.
import { workerData } from 'node:worker_threads';

try {
  await import('./ts-register.mjs');
  await import('./remote-worker.ts');
} catch (e) {
  workerData.port.postMessage({ type: 'error', message: `${e?.message ?? e}\n${e?.stack ?? ''}` });
  const home = new Int32Array(workerData.home);
  Atomics.store(home, 1, 3);
  Atomics.notify(home, 1);
}
