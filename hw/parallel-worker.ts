/**
 * hw/parallel-worker.ts — one worker of the parallel engine (see hw/parallel.ts). It attaches to
 * the machine, builds the agents of its CPUs from their specifications and runs them in turn,
 * one quantum each, taking IPIs at every access boundary. When its agents are done it keeps
 * answering IPIs until every worker is done, then syncs its CPUs' counters into the buffer.
 */

import { parentPort, workerData } from 'node:worker_threads';
import { Machine } from './machine.ts';
import type { Agent, AgentStatus, EngineContext } from './engine.ts';
import { Random } from './random.ts';
import { P_ABORT, P_DONE, P_READY, type AgentSpec } from './parallel.ts';
import { A_TAIL } from './layout.ts';

interface Init {
  sab: SharedArrayBuffer;
  coord: SharedArrayBuffer;
  workers: number;
  quantum: number;
  cpus: { index: number; spec: AgentSpec }[];
}

async function main(): Promise<void> {
  const init = workerData as Init;
  const machine = Machine.attach(init.sab);
  const coord = new Int32Array(init.coord);
  // The workers ask every waiting agent whether it is ready at each turn: nothing to recheck.
  const ctx: EngineContext = { machine, rng: new Random(1), steps: 0, recheck: () => {} };
  const runs: { cpu: ReturnType<Machine['cpu']>; agent: Agent; status: AgentStatus }[] = [];
  for (const { index, spec } of init.cpus) {
    const mod = (await import(spec.module)) as Record<string, unknown>;
    const factory = mod[spec.export];
    if (typeof factory !== 'function') throw new Error(`${spec.module} does not export a function "${spec.export}"`);
    const agent = (factory as (args: unknown, cpu: number, m: Machine) => Agent)(spec.args, index, machine);
    runs.push({ cpu: machine.cpu(index), agent, status: 'run' });
  }
  // The start barrier: every worker's agents are built before any CPU runs.
  Atomics.add(coord, P_READY, 1);
  Atomics.notify(coord, P_READY);
  for (let ready = Atomics.load(coord, P_READY); ready < init.workers; ready = Atomics.load(coord, P_READY)) {
    if (Atomics.load(coord, P_ABORT) !== 0) return;
    Atomics.wait(coord, P_READY, ready, 50);
  }
  const t0 = performance.now();
  let active = runs.length;
  let spins = 0;
  while (active > 0) {
    if (Atomics.load(coord, P_ABORT) !== 0) return;
    active = 0;
    for (const r of runs) {
      machine.apic.deliver(r.cpu, false);
      if (r.status === 'done') continue;
      if (r.status === 'wait' && r.agent.ready && !r.agent.ready(r.cpu, ctx)) {
        active++;
        continue;
      }
      r.status = r.agent.step(r.cpu, r.cpu.cycles + init.quantum, ctx);
      if (r.status !== 'done') active++;
    }
    if (++spins % 1024 === 0 && runs.every((r) => r.status !== 'run')) Atomics.wait(coord, P_ABORT, 0, 0.05);
  }
  const ms = performance.now() - t0;
  for (const r of runs) r.cpu.sync();
  Atomics.add(coord, P_DONE, 1);
  // Keep answering IPIs until every worker has finished its agents. Spin first (an IPI sender
  // is spinning for its acknowledgement); sleep on the first CPU's mailbox tail only after a
  // long quiet spell (senders notify that word).
  let quiet = 0;
  while (Atomics.load(coord, P_DONE) < init.workers && Atomics.load(coord, P_ABORT) === 0) {
    let took = 0;
    for (const r of runs) took += machine.apic.deliver(r.cpu, false);
    if (took !== 0) quiet = 0;
    else if (++quiet > 200_000) {
      const r0 = runs[0]!.cpu.r;
      Atomics.wait(r0, A_TAIL, Atomics.load(r0, A_TAIL), 2);
      quiet = 0;
    }
  }
  for (const r of runs) r.cpu.sync();
  parentPort!.postMessage({ type: 'finished', ms });
}

main().catch((e: unknown) => {
  const err = e as Error;
  parentPort!.postMessage({ type: 'error', message: `${err.message}\n${err.stack ?? ''}` });
});
