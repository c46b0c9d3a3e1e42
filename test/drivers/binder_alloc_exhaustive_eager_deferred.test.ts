// The exhaustive binder_alloc test (binder_alloc_exhaustive.ts) for the `eager-deferred` design: all
// 750,000 runs with every invariant, in a file of its own so vitest runs the designs in parallel.
import { exhaustiveTest } from './exhaustive_child.ts';

exhaustiveTest('eager-deferred');
