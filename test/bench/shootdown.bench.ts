/**
 * test/bench/shootdown.bench.ts — the default `mmulab shootdown` sweep (60 points: 2, 4 and 8
 * CPUs × 1, 8, 33, 64 and 512 pages × the four policies), end to end through the command with
 * its default --jobs, timed once with tinybench. The target: the whole sweep in under 10 s on a
 * 2-core machine, i.e. at least 6 points per second.
 */

import { Bench } from 'tinybench';
import { main } from '../../src/cli.ts';
import { DEFAULTS } from '../../src/commands/shootdown.ts';
import { cpuSecondsWithChildren, type BenchDef } from './harness.ts';

const POINTS = DEFAULTS.cpus.length * DEFAULTS.pages.length * DEFAULTS.policies.length * DEFAULTS.lazy.length * DEFAULTS.pcid.length * DEFAULTS.batch.length * DEFAULTS.ops.length;

function defaultSweep(): BenchDef {
  return {
    kind: 'measured',
    group: 'shootdown',
    name: `mmulab shootdown, default sweep (${POINTS} points, default --jobs)`,
    unit: 'points/s',
    run: async () => {
      let failed = '';
      const cpu0 = cpuSecondsWithChildren();
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
      // CPU time of the worker processes too: on a shared machine wall time also measures the neighbours.
      const cpu = cpuSecondsWithChildren() - cpu0;
      return { value: POINTS / seconds, detail: `${seconds.toFixed(2)} s for the sweep, ${cpu.toFixed(2)} s of CPU` };
    },
    target: { atLeast: POINTS / 10, source: 'issue 8 §2: the default sweep in under 10 s' },
  };
}

/**
 * Issue 5 §8: the protocol sweep — CPUs 1 to 256 and pages 1 to 512 in powers of two, the
 * ceiling on (Linux's policy, tlb_single_page_flush_ceiling = 33) and off (no ceiling: INVLPG per
 * page), lazy TLB on and off — 360 points, one munmap per point (--rounds 1), a 4-page working set
 * per remote thread and 10,000 ticks per second (short windows: the ticks only pace LATR, which
 * this sweep leaves out). Every point reports the initiator's modelled cycles in the flush, IPIs
 * and TLB entries flushed.
 */
const FULL_SWEEP_ARGS = ['shootdown', '--json', '--cpus-list', '1,2,4,8,16,32,64,128,256', '--pages', '1,2,4,8,16,32,64,128,256,512', '--policy', 'linux,per-page', '--lazy', 'on,off', '--rounds', '1', '--working-set', '4', '--hz', '10000'];
const FULL_SWEEP_POINTS = 9 * 10 * 2 * 2;

function protocolSweep(): BenchDef {
  return {
    kind: 'measured',
    group: 'shootdown',
    name: `mmulab shootdown, protocol sweep: CPUs 1–256 × pages 1–512 × ceiling on/off × lazy on/off (${FULL_SWEEP_POINTS} points, default --jobs)`,
    unit: 's',
    run: async () => {
      let out = '';
      let failed = '';
      const cpu0 = cpuSecondsWithChildren();
      const bench = new Bench({ iterations: 1, time: 0, warmupIterations: 0, warmupTime: 0 });
      bench.add('protocol sweep', async () => {
        let err = '';
        out = '';
        const code = await main(FULL_SWEEP_ARGS, { out: (s) => void (out += s), err: (s) => void (err += s) });
        if (code !== 0) failed = `exit code ${code}: ${err.trim()}`;
      });
      await bench.run();
      const t = bench.tasks[0]!.result;
      if (t.state !== 'completed') throw new Error(`shootdown benchmark did not complete: ${t.state}`);
      if (failed) throw new Error(`mmulab ${FULL_SWEEP_ARGS.join(' ')} failed: ${failed}`);
      const report = JSON.parse(out) as { points: { cpus: number; ipis: number; entriesFlushed: number }[] };
      if (report.points.length !== FULL_SWEEP_POINTS) throw new Error(`the protocol sweep reported ${report.points.length} points, expected ${FULL_SWEEP_POINTS}`);
      const maxIpis = Math.max(...report.points.filter((p) => p.cpus === 256).map((p) => p.ipis));
      const cpu = cpuSecondsWithChildren() - cpu0;
      return { value: t.latency.mean / 1000, detail: `${cpu.toFixed(1)} s of CPU (worker processes included); at 256 CPUs up to ${maxIpis.toFixed(0)} IPIs per flush; command: mmulab ${FULL_SWEEP_ARGS.filter((a) => a !== '--json').join(' ')}` };
    },
    target: { atMost: 10, source: 'issue 5 §8' },
  };
}

export function shootdownBenchmarks(): BenchDef[] {
  return [defaultSweep(), protocolSweep()];
}
