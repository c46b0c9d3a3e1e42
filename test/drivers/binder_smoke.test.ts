import { expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { IPCThreadState, Parcel, ProcessState, addService, getService, runServiceManager, type Received } from '../../src/workloads/libbinder.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { spawnThroughput } from '../../src/workloads/binder_throughput.ts';
import { BINDER_TYPE_HANDLE } from '../../drivers/android/binder/uapi.ts';

/**
 * servicemanager, a server that registers `name` and serves one transaction with `handler`
 * (after `prepare` set its thread up), and a client that looks the service up and runs `call`
 * with its thread and the handle; the machine runs until all three are done.
 */
function oneService(
  design: DesignName,
  name: string,
  handler: (t: Received, server: User) => KGen<Parcel | null>,
  call: (ipc: IPCThreadState, handle: number) => KGen,
  prepare: (ipc: IPCThreadState) => void = () => {},
): { k: Kernel; dev: BinderDevice } {
  const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
  const dev = new BinderDevice(k, { design: { design } });
  k.spawn(function* servicemanager(u: User) {
    yield* runServiceManager(u, { maxRequests: 2 });
  });
  k.spawn(function* server(u: User) {
    yield* u.sleep(100_000);
    const ps = yield* ProcessState.open(u);
    const ipc = new IPCThreadState(u, ps);
    expect(yield* addService(ipc, name, 0x1234)).toBe(true);
    prepare(ipc);
    yield* ipc.joinThreadPool((t) => handler(t, u), 1);
    yield* ipc.flush();
  });
  k.spawn(function* client(u: User) {
    yield* u.sleep(2_000_000);
    const ps = yield* ProcessState.open(u);
    const ipc = new IPCThreadState(u, ps);
    const h = yield* getService(ipc, name);
    expect(h).toBeGreaterThan(0);
    yield* call(ipc, h);
    yield* ipc.flush();
  });
  expect(k.run({ maxSteps: 1_000_000 }).reason).toBe('done');
  return { k, dev };
}

for (const design of ['eager', 'eager-writelock', 'eager-deferred', 'fault', 'pfnmap'] as const) {
  it(`round trip via servicemanager (${design})`, () => {
    let echoed = '';
    const { k, dev } = oneService(
      design,
      'echo',
      function* (t) {
        return Parcel.from(t.data);
      },
      function* (ipc, h) {
        const r = yield* ipc.transact(h, 1, Parcel.from(new TextEncoder().encode('hello binder')));
        expect(r.status).toBe('ok');
        echoed = new TextDecoder().decode(r.reply!.data);
      },
    );
    expect(echoed).toBe('hello binder');
    expect(k.reports.reports.map((r) => r.title)).toEqual([]);
    expect(check_vm_invariants(k).problems).toEqual([]);
    expect(dev.stats.transactions).toBe(3);
  });
}

it('binder_transaction_alloc_buf and binder_transaction_buffer_release name the transaction the buffer carries (buffer->debug_id = t->debug_id)', () => {
  const k = new Kernel({ cpus: 4, memoryBytes: 64 << 20, trace: true });
  new BinderDevice(k, { design: { design: 'eager' } });
  const res = spawnThroughput(k, { workers: 2, iterations: 20, payload: 64 });
  expect(k.run({ maxSteps: 1e7 }).reason).toBe('done');
  expect(res.failures).toBe(0);
  const txIds = new Set<number>();
  const allocIds: number[] = [];
  const releaseIds: number[] = [];
  for (const e of k.trace.events) {
    if (e.name === 'binder:binder_transaction') txIds.add(e.fields.debug_id as number);
    else if (e.name === 'binder:binder_transaction_alloc_buf') allocIds.push(e.fields.debug_id as number);
    else if (e.name === 'binder:binder_transaction_buffer_release') releaseIds.push(e.fields.debug_id as number);
  }
  // Every transaction allocated a buffer, each alloc names a transaction, and no two allocs the same one.
  expect(allocIds.length).toBe(txIds.size);
  expect(new Set(allocIds).size).toBe(allocIds.length);
  for (const id of allocIds) expect(txIds.has(id)).toBe(true);
  expect(releaseIds.length).toBeGreaterThan(0);
  for (const id of releaseIds) expect(txIds.has(id)).toBe(true);
});

it('a service that does not read payloads (readPayloads = false) still gets its objects, the payload size and an empty payload, and touches no payload page', () => {
  let got: { data: number; dataSize: number; objects: { type: number; value: number; cookie: number }[] } | null = null;
  let faultsInPayload = -1;
  let before = 0;
  const { k, dev } = oneService(
    'fault',
    'nop',
    function* (t, server) {
      got = { data: t.data.length, dataSize: t.dataSize, objects: t.objects };
      faultsInPayload = server.task.stats.faults - before;
      return null;
    },
    function* (ipc, h) {
      // 16 KiB of payload, then a binder object of the client's own at its end.
      const p = new Parcel().writeBytes(new Uint8Array(16384)).writeStrongBinder(0xbeef, 7);
      expect((yield* ipc.transact(h, 1, p)).status).toBe('ok');
    },
    (ipc) => {
      ipc.readPayloads = false;
      before = ipc.u.task.stats.faults;
    },
  );
  expect(got).not.toBeNull();
  expect(got!.data).toBe(0);
  expect(got!.dataSize).toBe(16384 + 24);
  // The client's node arrives as a handle in the server.
  expect(got!.objects).toHaveLength(1);
  expect(got!.objects[0]!.type).toBe(BINDER_TYPE_HANDLE);
  // Under the fault design a page is mapped only when touched: reading the offsets and the
  // object (both in the last page of the buffer) takes at most that page's fault, not the
  // payload's five pages.
  expect(faultsInPayload).toBeGreaterThanOrEqual(0);
  expect(faultsInPayload).toBeLessThanOrEqual(1);
  expect(k.reports.reports.map((r) => r.title)).toEqual([]);
  expect(dev.stats.transactions).toBe(3);
});
