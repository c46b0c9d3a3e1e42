/**
 * src/workloads/binder_throughput.ts — the shape of AOSP's binderThroughputTest
 * (frameworks/native/libs/binder/tests/binderThroughputTest.cpp): N worker processes, each
 * registering a service "binderWorker<i>" with the servicemanager and serving it from a binder
 * thread, while its main thread sends `iterations` synchronous transactions of `payload` bytes
 * to the other workers in turn and measures each round trip.
 *
 * Differences from the original: latencies are in virtual cycles (the emulator's clock), not
 * wall time; targets go round-robin over the other workers instead of `rand() % workers` (the
 * test's `-p` pair mode), so runs are deterministic without a PRNG; each worker has exactly one
 * binder thread, sized for the transactions it will be sent; by default the binder thread reads
 * every payload out of the mapping, as a service that unmarshals its data does (the original's
 * BINDER_NOP handler reads nothing: `receiverReads: false`).
 *
 * Options let experiments add oneway sends, extra receiver threads and memory pressure; see
 * src/experiments/ab.ts.
 */

import type { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { Random } from '../../hw/random.ts';
import { IPCThreadState, Parcel, ProcessState, addService, getService, runServiceManager } from './libbinder.ts';
import { TF_ONE_WAY } from '../../drivers/android/binder/uapi.ts';

export interface ThroughputOptions {
  workers: number;
  iterations: number;
  /** Payload bytes per transaction. */
  payload: number;
  /** Send oneway (TF_ONE_WAY) instead of synchronous transactions. */
  oneway?: boolean;
  /** The binder mapping size per process (default libbinder's 1 MiB − 8 KiB). */
  vmSize?: number;
  /** CPU of worker i's main thread and of its binder thread (default: spread over the CPUs). */
  cpuOf?: (worker: number, thread: 'main' | 'binder') => number | undefined;
  /** Seed of the think time between iterations (default 1). */
  seed?: number;
  /** Think time between iterations, uniform in [0, thinkCycles] (default 0). */
  thinkCycles?: number;
  /**
   * Whether the workers' binder threads read each payload out of the mapping (default true).
   * binderThroughputTest's own BINDER_NOP handler never does; false models it.
   */
  receiverReads?: boolean;
  /** More threads in every worker process, running while the worker sends (mmap_lock contention, spreading the mm over CPUs). `stop()` turns true once every worker has finished sending. */
  extraThreads?: { body: (t: User, worker: number, stop: () => boolean) => KGen; cpu?: (worker: number, index: number) => number | undefined }[];
}

export interface ThroughputResult {
  /** Completed transactions (all workers). */
  transactions: number;
  /** Failed or dead transactions. */
  failures: number;
  /** Round-trip latency of every transaction, in cycles. */
  latencies: number[];
  /** Virtual cycles from the first send to the last completion. */
  elapsedCycles: number;
  /** pid of each worker process (the receivers). */
  workerPids: number[];
  /** Every thread id of the workers (binder and extra threads included). */
  receiverTids: Set<number>;
  /** Page faults taken by the workers' threads (all of them, counted as each thread ends). */
  receiverFaults: number;
  /** Highest number of frames in use seen at a transaction's completion. */
  peakFrames: number;
  /** Workers that finished sending. */
  finished: number;
  /** Failed transactions by what the sender saw ('dead', 'failed'). */
  failuresByKind: Record<string, number>;
  /** Workers done, quit messages included. */
  sent: number;
  /** Binder and extra threads still running (kswapd-like helpers count themselves in too). */
  extraRunning: number;
  checked: boolean;
  /** Called once every thread is done, while every process is still alive. */
  onAllSent?: () => void;
}

const WORKER = 'binderWorker';
/** Sent by a worker to every other one after its last transaction. */
export const QUIT_TRANSACTION = 0x51554954;

/**
 * Spawn servicemanager and the workers on `k`. Returns the result object, filled in as the
 * programs run: call `k.run()` afterwards.
 */
export function spawnThroughput(k: Kernel, o: ThroughputOptions): ThroughputResult {
  if (!Number.isInteger(o.workers) || o.workers < 2) throw new RangeError(`binder throughput needs at least 2 workers, got ${o.workers}`);
  if (!Number.isInteger(o.iterations) || o.iterations < 1) throw new RangeError(`iterations must be a positive integer, got ${o.iterations}`);
  if (!Number.isInteger(o.payload) || o.payload < 0) throw new RangeError(`payload must be a non-negative integer, got ${o.payload}`);
  const res: ThroughputResult = { transactions: 0, failures: 0, latencies: [], elapsedCycles: 0, workerPids: [], receiverTids: new Set(), receiverFaults: 0, peakFrames: 0, finished: 0, failuresByKind: {}, sent: 0, extraRunning: 0, checked: false };
  const rng = new Random(o.seed ?? 1);
  const think = o.thinkCycles ?? 0;
  const stop = () => res.finished >= o.workers;
  const n = o.workers;
  const ncpu = k.machine.cpus.length;
  const cpuOf = o.cpuOf ?? ((w: number, th: 'main' | 'binder') => (2 * w + (th === 'binder' ? 1 : 0)) % ncpu);
  let registered = 0;
  let first = Infinity;
  let last = 0;
  k.spawn(function* servicemanager(u: User) {
    // 2 requests per worker (addService) + (n−1) lookups per worker.
    yield* runServiceManager(u, { maxRequests: n + n * (n - 1) });
  }, { comm: 'servicemanager' });
  for (let w = 0; w < n; w++) {
    k.spawn(function* worker(u: User) {
      res.workerPids.push(u.pid);
      res.receiverTids.add(u.tid);
      yield* u.sleep(50_000); // let servicemanager become the context manager
      const ps = yield* ProcessState.open(u, { vmSize: o.vmSize });
      const ipc = new IPCThreadState(u, ps);
      const reply = new Parcel();
      // The binder thread serves until every other worker said it is done (QUIT_TRANSACTION,
      // sent synchronously after its last transaction), so failed transactions cannot strand it.
      const binderTid = yield* u.clone(
        function* binderThread(t: User) {
          const ipcT = new IPCThreadState(t, ps);
          ipcT.readPayloads = o.receiverReads ?? true;
          let quits = 0;
          yield* ipcT.joinThreadPool(function* (tr) {
            if (tr.code === QUIT_TRANSACTION && ++quits === n - 1) ipcT.stop = true;
            return reply;
          });
          yield* ipcT.flush();
          res.receiverFaults += t.task.stats.faults;
          res.extraRunning--;
        },
        { cpu: cpuOf(w, 'binder'), comm: `${WORKER}${w}:b` },
      );
      res.receiverTids.add(binderTid);
      res.extraRunning++;
      for (const [i, x] of (o.extraThreads ?? []).entries()) {
        const tid = yield* u.clone(
          function* extra(t: User) {
            yield* x.body(t, w, stop);
            res.receiverFaults += t.task.stats.faults;
            res.extraRunning--;
          },
          { cpu: x.cpu?.(w, i), comm: `${WORKER}${w}:x${i}` },
        );
        res.receiverTids.add(tid);
        res.extraRunning++;
      }
      if (!(yield* addService(ipc, `${WORKER}${w}`, 0x1000 + w))) throw new Error(`worker ${w}: addService failed`);
      registered++;
      while (registered < n) yield* u.sleep(20_000);
      const handles: number[] = [];
      for (let t = 0; t < n; t++) handles.push(t === w ? -1 : yield* getService(ipc, `${WORKER}${t}`));
      const data = new Parcel().writeBytes(new Uint8Array(o.payload));
      const flags = o.oneway ? TF_ONE_WAY : 0;
      for (let i = 0; i < o.iterations; i++) {
        const h = handles[targetOf(w, i, n)]!;
        const t0 = k.now();
        if (t0 < first) first = t0;
        const r = yield* ipc.transact(h, 1, data, flags);
        const t1 = k.now();
        if (r.status === 'ok') {
          res.transactions++;
          res.latencies.push(t1 - t0);
        } else {
          res.failures++;
          res.failuresByKind[r.status] = (res.failuresByKind[r.status] ?? 0) + 1;
        }
        if (t1 > last) last = t1;
        if (k.pages.usedFrames > res.peakFrames) res.peakFrames = k.pages.usedFrames;
        if (think) {
          const d = rng.below(think + 1);
          if (d) yield* u.sleep(d);
        }
      }
      res.elapsedCycles = Math.max(0, last - first);
      res.finished++;
      for (let t = 0; t < n; t++) if (t !== w) yield* ipc.transact(handles[t]!, QUIT_TRANSACTION, new Parcel());
      yield* ipc.flush();
      // Stay alive until every thread of every worker is done, so the last one can look at a
      // quiescent system (no thread stopped halfway through an mm operation).
      res.sent++;
      while (res.sent < n || res.extraRunning > 0) yield* u.sleep(20_000);
      if (!res.checked) {
        res.checked = true;
        res.onAllSent?.();
      }
      res.receiverFaults += u.task.stats.faults;
    }, { comm: `${WORKER}${w}`, cpu: cpuOf(w, 'main') });
  }
  return res;
}

/** Worker `w`'s target for iteration `i`: the other workers in turn. */
export function targetOf(w: number, i: number, n: number): number {
  return (w + 1 + (i % (n - 1))) % n;
}
