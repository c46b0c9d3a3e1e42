/**
 * hw/remote-worker.ts — one worker of hw/remote.ts: runs stretches of access streams on the CPUs
 * the main thread hands it, at CPL 3 as the main thread left them, and gives each CPU back at
 * the first event that needs the kernel (see the exit reasons in hw/remote.ts).
 *
 * An IPI is taken at an access boundary, as on the main thread: the CPU notices it before its
 * next translation (Cpu.deliverIpis). Messages whose vector this thread can handle (the
 * hardware's VEC_INVALIDATE) are taken here; any other stops the stretch before that access,
 * untaken, for the kernel to take on the main thread.
 *
 * A worker belongs to the process's pool (hw/remote.ts): it sleeps on its home word, serves the
 * machine an attach message names until the main thread sets that machine's abort word, then
 * drops it and sleeps again. It is never driven by events: messages are read with
 * receiveMessageOnPort, so the main thread's waits are all it takes.
 */

import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { Machine } from './machine.ts';
import type { Cpu } from './cpu.ts';
import {
  EXIT_DONE, EXIT_FAULT, EXIT_IPI, EXIT_UNTIL, EXIT_WATCH, G_ABORT, G_MAIN, G_WORKER, S_AT, S_ERROR, S_FROM, S_REASON, S_STATE, S_STREAM, S_UNTIL_F64, S_VECTOR,
  SLOT_BASE, SLOT_WORDS, ST_EXITED, ST_RUN, H_CALL, H_STATE, W_ATTACHED, W_FAILED, W_IDLE, type AttachMessage, type SharedStream,
} from './remote.ts';

interface Home {
  home: SharedArrayBuffer;
  port: MessagePort;
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

/** Serve one machine until its abort word is set. */
function serve(init: AttachMessage, port: MessagePort, streams: Map<number, SharedStream>): void {
  const machine = Machine.attach(init.sab);
  const ctl = new Int32Array(init.ctl);
  const ctlF = new Float64Array(init.ctl);
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

  const drain = (): void => {
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      const s = m.message as SharedStream;
      if (typeof s.id === 'number') streams.set(s.id, s);
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

function main(): void {
  const { home: homeBuf, port } = workerData as Home;
  const home = new Int32Array(homeBuf);
  const setState = (st: number): void => {
    Atomics.store(home, H_STATE, st);
    Atomics.notify(home, H_STATE);
  };
  let ctl: Int32Array | null = null;
  try {
    setState(W_IDLE);
    for (;;) {
      const call = Atomics.load(home, H_CALL);
      // Streams are per machine; ids are unique in the process, so one that arrives late is
      // never taken for another machine's.
      const streams = new Map<number, SharedStream>();
      let attach: AttachMessage | null = null;
      while (attach === null) {
        const m = receiveMessageOnPort(port);
        if (m === undefined) break;
        if ((m.message as { type?: string }).type === 'attach') attach = m.message as AttachMessage;
      }
      if (attach === null) {
        Atomics.wait(home, H_CALL, call);
        continue;
      }
      ctl = new Int32Array(attach.ctl);
      setState(W_ATTACHED);
      serve(attach, port, streams);
      ctl = null;
      setState(W_IDLE);
    }
  } catch (e) {
    const err = e as Error;
    port.postMessage({ type: 'error', message: `${err.message}\n${err.stack ?? ''}` });
    setState(W_FAILED);
    // Wake the main thread if it is waiting for this machine's CPUs.
    if (ctl !== null) {
      Atomics.add(ctl, G_MAIN, 1);
      Atomics.notify(ctl, G_MAIN);
    }
  }
}

main();
