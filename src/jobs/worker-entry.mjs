// Worker entry of the job pool (a forked process): register the TypeScript loader, then run the
// job worker.
import '../../hw/ts-register.mjs';

await import('./worker.ts');
