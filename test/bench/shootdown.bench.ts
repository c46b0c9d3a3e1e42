/**
 * test/bench/shootdown.bench.ts — the default `mmulab shootdown` sweep (60 points: 2, 4 and 8
 * CPUs × 1, 8, 33, 64 and 512 pages × the four policies), end to end through the command with
 * its default --jobs, timed once with tinybench. The target: the whole sweep in under 10 s on a
 * 2-core machine, i.e. at least 6 points per second.
 */

import { Bench } from 'tinybench';
import { main } from '../../src/cli.ts';
import { DEFAULTS } from '../../src/commands/shootdown.ts';
import type { BenchDef } from './harness.ts';

const POINTS = DEFAULTS.cpus.length * DEFAULTS.pages.length * DEFAULTS.policies.length * DEFAULTS.lazy.length * DEFAULTS.pcid.length * DEFAULTS.batch.length * DEFAULTS.ops.length;

function defaultSweep(): BenchDef {
  return {
    kind: 'measured',
    group: 'shootdown',
    name: `mmulab shootdown, default sweep (${POINTS} points, default --jobs)`,
    unit: 'points/s',
    run: async () => {
      let failed = '';
      const cpu0 = process.cpuUsage();
      const bench = new Bench({ iterations: 1, time: 0, warmupIterations: 0, warmupTime: 0 });
      bench.add('default sweep', async () => {
        let err = '';
        const code = await main(['shootdown', '--json'], { out: () => {}, err: (s) => void (err += s) });
        if (code !== 0) failed = `exit code ${code}: ${err.trim()}`;
      });
      await bench.run();
      const t = bench.tasks[0]!.result;
      if (t.state !== 'completed') throw new Error(`shootdown benchmark did not complete: ${t.state}`);
      if (failed) throw new Error(`mmulab shootdown failed: ${failed}`);
      const seconds = t.latency.mean / 1000;
      const cpu = process.cpuUsage(cpu0);
      // CPU time of all threads too: on a shared machine wall time also measures the neighbours.
      return { value: POINTS / seconds, detail: `${seconds.toFixed(2)} s for the sweep, ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s of CPU` };
    },
    target: { atLeast: POINTS / 10, source: 'issue 8 §2: the default sweep in under 10 s' },
  };
}

export function shootdownBenchmarks(): BenchDef[] {
  return [defaultSweep()];
}
