// Worker entry of the parallel engine: load TypeScript through tsx, then run the worker.
// (Node 20 does not pass --import loaders on to worker threads.)
import { register } from 'tsx/esm/api';

register();
await import('./parallel-worker.ts');
