/**
 * test/drivers/binder_alloc_exhaustive_main.ts — runs the exhaustive binder_alloc test of one
 * design in a process of its own and prints its result as JSON on stdout:
 *
 *   node --import ./hw/ts-register.mjs test/drivers/binder_alloc_exhaustive_main.ts eager
 *
 * The per-design test files start it as a child process: as plain ES modules the emulator runs
 * two to three times faster than under the test runner's module transform (every imported
 * binding there is a getter call), and two children use both cores.
 */

import { DESIGNS, type DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { runExhaustive } from './binder_alloc_exhaustive.ts';

const design = process.argv[2];
if (!design || !(DESIGNS as readonly string[]).includes(design)) {
  process.stderr.write(`usage: binder_alloc_exhaustive_main.ts DESIGN (one of ${DESIGNS.join(', ')})\n`);
  process.exit(2);
}
const r = runExhaustive({ design: design as DesignName });
process.stdout.write(JSON.stringify(r) + '\n');
