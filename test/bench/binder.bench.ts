/**
 * test/bench/binder.bench.ts — binderThroughputTest (2 workers, 10,000 synchronous iterations
 * each; 0 B, 4 KiB and 64 KiB payloads) on the deterministic engine, per design: emulated
 * transactions per second of real time. The whole workload runs once per figure (tinybench,
 * one iteration), servicemanager and start-up included.
 */

import { Bench } from 'tinybench';
import { Kernel } from '../../kernel/kernel.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { DESIGNS, type DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { spawnThroughput } from '../../src/workloads/binder_throughput.ts';
import type { BenchDef } from './harness.ts';

const ITERATIONS = 10_000;

function throughput(design: DesignName, payload: number): BenchDef {
  return {
    kind: 'measured',
    group: 'binder',
    name: `binderThroughputTest, ${design}, ${payload ? `${payload / 1024} KiB` : '0 B'} payload, 2 workers × ${ITERATIONS.toLocaleString('en-US')} sync`,
    unit: 'tx/s',
    run: async () => {
      let tx = 0;
      let detail = '';
      const bench = new Bench({ iterations: 1, time: 0, warmupIterations: 0, warmupTime: 0 });
      bench.add(design, () => {
        const k = new Kernel({ cpus: 4, memoryBytes: 64 << 20 });
        new BinderDevice(k, { design: { design } });
        const res = spawnThroughput(k, { workers: 2, iterations: ITERATIONS, payload });
        const r = k.run({ maxSteps: 1e9 });
        if (r.reason !== 'done' || res.failures) throw new Error(`binderThroughputTest (${design}) ended with ${r.reason}, ${res.failures} failed transactions`);
        tx = res.transactions;
        detail = `${(res.transactions / (k.micros(res.elapsedCycles) / 1e6)).toFixed(0)} tx/s of virtual time`;
      });
      await bench.run();
      const t = bench.tasks[0]!.result;
      if (t.state !== 'completed') throw new Error(`binder benchmark did not complete: ${t.state}`);
      return { value: tx / (t.latency.mean / 1000), detail };
    },
    target: { atLeast: 200_000, source: 'issue 7 §6' },
  };
}

export function binderBenchmarks(): BenchDef[] {
  const out: BenchDef[] = [];
  for (const d of DESIGNS) out.push(throughput(d, 0));
  for (const d of DESIGNS) out.push(throughput(d, 4096));
  for (const d of DESIGNS) out.push(throughput(d, 65536));
  return out;
}
