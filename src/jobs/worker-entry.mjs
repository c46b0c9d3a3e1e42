// Worker entry of the job pool: load TypeScript through tsx, then run the job worker.
// (Node 20 does not pass --import loaders on to worker threads.)
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
