/**
 * hw/remote-worker.ts — one worker of hw/remote.ts: runs stretches of access streams on the CPUs
 * the main thread hands it, at CPL 3 as the main thread left them, and gives each CPU back at
 * the first event that needs the kernel (see the exit reasons in hw/remote.ts).
 *
 * An IPI is taken at an access boundary, as on the main thread: the CPU notices it before its
 * next translation (Cpu.deliverIpis). Messages whose vector this thread can handle (the
 * hardware's VEC_INVALIDATE) are taken here; any other stops the stretch before that access,
 * untaken, for the kernel to take on the main thread.
 */

import { receiveMessageOnPort, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { Machine } from './machine.ts';
import type { Cpu } from './cpu.ts';
import {
  EXIT_DONE, EXIT_FAULT, EXIT_IPI, EXIT_UNTIL, EXIT_WATCH, G_ABORT, G_MAIN, G_WORKER, S_AT, S_ERROR, S_FROM, S_REASON, S_STATE, S_STREAM, S_UNTIL_F64, S_VECTOR,
  SLOT_BASE, SLOT_WORDS, ST_EXITED, ST_RUN, type SharedStream,
} from './remote.ts';

interface Init {
  sab: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  port: MessagePort;
  worker: number;
  cpus: number[];
}

/** Thrown out of a translation when an IPI this thread cannot handle is waiting. */
const IPI_EXIT = { ipiExit: true };

/** Accesses between looks at the clock limit and the abort word. */
const CHUNK = 256;
/** Accesses one CPU runs before the worker turns to its next CPU. */
const TURN = 16 * 1024;

interface Run {
  cpu: Cpu;
  base: number;
  /** Taken over from the main thread (adopted) and not given back yet. */
  held: boolean;
  stream: SharedStream | null;
  at: number;
  until: number;
}

function main(): void {
  const init = workerData as Init;
  const machine = Machine.attach(init.sab);
  const ctl = new Int32Array(init.ctl);
  const ctlF = new Float64Array(init.ctl);
  const streams = new Map<number, SharedStream>();
  const apic = machine.apic;
  const runs: Run[] = init.cpus.map((i) => {
    const cpu = machine.cpu(i);
    const run: Run = { cpu, base: SLOT_BASE + i * SLOT_WORDS, held: false, stream: null, at: 0, until: 0 };
    cpu.deliverIpis = (c) => {
      if (!apic.canTakeAll(c)) throw IPI_EXIT;
      apic.deliver(c, false);
    };
    return run;
  });
  const wake = G_WORKER + init.worker;
  parentPort!.postMessage({ type: 'ready' });

  const drain = (): void => {
    for (let m = receiveMessageOnPort(init.port); m !== undefined; m = receiveMessageOnPort(init.port)) {
      const s = m.message as SharedStream;
      streams.set(s.id, s);
    }
  };

  const exit = (r: Run, reason: number, vector = 0, error = 0): void => {
    r.cpu.sync();
    ctl[r.base + S_AT] = r.at;
    ctl[r.base + S_REASON] = reason;
    ctl[r.base + S_VECTOR] = vector;
    ctl[r.base + S_ERROR] = error;
    r.held = false;
    r.stream = null;
    Atomics.store(ctl, r.base + S_STATE, ST_EXITED);
    Atomics.add(ctl, G_MAIN, 1);
    Atomics.notify(ctl, G_MAIN);
  };

  /** Run `r` for up to TURN accesses; true if it is still running. */
  const turn = (r: Run): boolean => {
    const cpu = r.cpu;
    const s = r.stream!;
    const { his, los, kinds, length } = s;
    const stop = Math.min(length, r.at + TURN);
    let i = r.at;
    try {
      while (i < stop) {
        if (cpu.cycles >= r.until) {
          r.at = i;
          exit(r, EXIT_UNTIL);
          return false;
        }
        const end = Math.min(stop, i + CHUNK);
        const watched = cpu.watchCount();
        for (; i < end; i++) if (cpu.translate(his[i]!, los[i]!, kinds[i]!, false, false) !== 0) break;
        if (cpu.watchCount() !== watched) {
          // The hits are in the CPU's watch ring; the main thread reports them.
          r.at = i;
          exit(r, EXIT_WATCH);
          return false;
        }
        if (i < end) {
          r.at = i;
          exit(r, EXIT_FAULT, cpu.faultVector, cpu.faultError);
          return false;
        }
      }
    } catch (e) {
      if (e !== IPI_EXIT) throw e;
      r.at = i;
      exit(r, EXIT_IPI);
      return false;
    }
    r.at = i;
    if (i >= length) {
      exit(r, EXIT_DONE);
      return false;
    }
    return true;
  };

  for (;;) {
    if (Atomics.load(ctl, G_ABORT) !== 0) return;
    const seen = Atomics.load(ctl, wake);
    let busy = false;
    for (const r of runs) {
      if (!r.held) {
        if (Atomics.load(ctl, r.base + S_STATE) !== ST_RUN) continue;
        const id = ctl[r.base + S_STREAM]!;
        if (!streams.has(id)) drain();
        const s = streams.get(id);
        if (s === undefined) {
          // Posted before the slot was set; not visible on the port yet.
          busy = true;
          continue;
        }
        r.cpu.adopt();
        r.held = true;
        r.stream = s;
        r.at = ctl[r.base + S_FROM]!;
        r.until = ctlF[(r.base >> 1) + S_UNTIL_F64]!;
        // Messages sent while the main thread held the CPU: adopt() re-read the attention word,
        // so the CPU would not notice them by itself.
        if (apic.pending(r.cpu) > 0) {
          if (!apic.canTakeAll(r.cpu)) {
            exit(r, EXIT_IPI);
            continue;
          }
          apic.deliver(r.cpu, false);
        }
      }
      if (turn(r)) busy = true;
    }
    if (!busy) Atomics.wait(ctl, wake, seen, 1000);
  }
}

try {
  main();
} catch (e) {
  const err = e as Error;
  parentPort!.postMessage({ type: 'error', message: `${err.message}\n${err.stack ?? ''}` });
}
