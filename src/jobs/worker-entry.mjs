// Worker entry of the job pool: register the TypeScript loader, then run the job worker.
// (Node 20 does not pass loaders on to worker threads.)
import '../../hw/ts-register.mjs';

await import('./worker.ts');
