// Worker entry of hw/remote.ts: register the TypeScript loader, then run the worker.
// (Node 20 does not pass loaders on to worker threads.)
import './ts-register.mjs';

await import('./remote-worker.ts');
