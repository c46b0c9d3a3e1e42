/**
 * Agent factories for tests and benchmarks that run in the parallel engine's workers (they are
 * loaded by module path there, so they live in their own module).
 */

import type { Machine } from '../../hw/machine.ts';
import type { Agent, AgentStatus } from '../../hw/engine.ts';
import { StreamAgent, type AccessStream } from '../../hw/engine.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { Random } from '../../hw/random.ts';
import { toVa } from '../../hw/address.ts';
import { VEC_INVALIDATE, invalidatePagesPayload, type IpiTicket } from '../../hw/apic.ts';

/** Reads (and optionally writes) `count` accesses over `pages` consecutive pages from `base`. */
export function hotStream(args: { base: string; pages: number; count: number; seed: number; writes?: number; cr3: string }, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const rng = new Random(args.seed);
  const s: AccessStream = { his: new Int32Array(args.count), los: new Int32Array(args.count), kinds: new Uint8Array(args.count), length: args.count };
  const base = BigInt(args.base);
  for (let i = 0; i < args.count; i++) {
    const [hi, lo] = toVa(base + BigInt(rng.below(args.pages) * 4096 + rng.below(512) * 8));
    s.his[i] = hi;
    s.los[i] = lo;
    s.kinds[i] = args.writes !== undefined && rng.chance(args.writes) ? 1 : 0;
  }
  return new StreamAgent(s);
}

/** Sends `rounds` invalidation IPIs to `target` and waits for each acknowledgement. */
export function pinger(args: { target: number; rounds: number; cr3: string }, cpu: number, machine: Machine): Agent & { waits: number } {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  let sent = 0;
  let ticket: IpiTicket | null = null;
  const agent = {
    waits: 0,
    step(cpuObj: Cpu): AgentStatus {
      if (ticket) {
        machine.apic.waitSpin(ticket);
        ticket = null;
      }
      if (sent >= args.rounds) return 'done';
      ticket = machine.apic.send(cpuObj, args.target, VEC_INVALIDATE, invalidatePagesPayload(0x1000n, 1));
      sent++;
      return 'wait';
    },
    ready(): boolean {
      return ticket === null || machine.apic.acked(ticket);
    },
  };
  return agent;
}

/** Does nothing; its worker still answers IPIs until every worker is done. */
export function idle(): Agent {
  return { step: () => 'done' };
}
