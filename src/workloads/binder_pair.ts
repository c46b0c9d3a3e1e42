/**
 * src/workloads/binder_pair.ts — the `binder` workload of `mmulab run`: a binder client and
 * server talking through /dev/binder with the libbinder-style library (libbinder.ts), under
 * servicemanager:
 *
 *   servicemanager   the context manager; serves the server's addService and the client's
 *                    getService, then ends
 *   binder_server    registers "mmulab.echo" and serves transactions from its main thread
 *                    (joinThreadPool): it reads each request out of its binder mapping — in the
 *                    fault design those reads page-fault — and replies with the first 64 bytes
 *   binder_client    looks the service up, sends --iterations synchronous transactions of
 *                    --payload bytes, then a quit transaction that ends the server's loop
 *
 * The page-mapping design of the binder driver is --design (drivers/android/binder/).
 */

import type { Kernel } from '../../kernel/kernel.ts';
import type { Program, User } from '../../kernel/uapi.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import type { DesignOptions } from '../../drivers/android/binder/page_mapping.ts';
import { IPCThreadState, Parcel, ProcessState, addService, getService, runServiceManager } from './libbinder.ts';

export interface BinderPairOptions {
  iterations: number;
  payload: number;
  design?: DesignOptions;
}

export const BINDER_SERVER = 'binder_server';
export const BINDER_CLIENT = 'binder_client';
export const SERVICE_NAME = 'mmulab.echo';
/** Sent by the client after its last transaction: the server leaves its loop. */
export const QUIT_CODE = 0x51554954;

export interface BinderPairResult {
  /** The binder device the pair talks through (for the end-of-run invariant check). */
  device: BinderDevice;
  transactions: number;
  failures: number;
  /** Round trips in cycles. */
  latencies: number[];
}

/** Install the binder device on `k` and spawn the three processes. */
export function spawnBinderPair(k: Kernel, o: BinderPairOptions, spawn: (program: Program, comm: string) => void): BinderPairResult {
  const device = new BinderDevice(k, o.design ? { design: o.design } : {});
  const res: BinderPairResult = { device, transactions: 0, failures: 0, latencies: [] };
  let registered = false;
  spawn(function* (u: User) {
    yield* runServiceManager(u, { maxRequests: 2 });
  }, 'servicemanager');
  spawn(function* (u: User) {
    yield* u.sleep(50_000); // let servicemanager become the context manager
    const ps = yield* ProcessState.open(u);
    const ipc = new IPCThreadState(u, ps);
    if (!(yield* addService(ipc, SERVICE_NAME, 0x1000))) throw new Error(`${BINDER_SERVER}: addService failed`);
    registered = true;
    yield* ipc.joinThreadPool(function* (t) {
      if (t.code === QUIT_CODE) ipc.stop = true;
      return new Parcel().writeBytes(t.data.subarray(0, 64));
    });
    yield* ipc.flush();
  }, BINDER_SERVER);
  spawn(function* (u: User) {
    while (!registered) yield* u.sleep(20_000);
    const ps = yield* ProcessState.open(u);
    const ipc = new IPCThreadState(u, ps);
    const h = yield* getService(ipc, SERVICE_NAME);
    if (h < 0) throw new Error(`${BINDER_CLIENT}: getService("${SERVICE_NAME}") failed`);
    const data = new Parcel().writeBytes(new Uint8Array(o.payload).map((_, i) => i & 0xff));
    for (let i = 0; i < o.iterations; i++) {
      const t0 = k.now();
      const r = yield* ipc.transact(h, 1, data);
      if (r.status === 'ok') {
        res.transactions++;
        res.latencies.push(k.now() - t0);
      } else res.failures++;
    }
    yield* ipc.transact(h, QUIT_CODE, new Parcel());
    yield* ipc.flush();
  }, BINDER_CLIENT);
  return res;
}
