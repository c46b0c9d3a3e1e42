/**
 * hw/machine.ts — the machine: one SharedArrayBuffer holding a header, the CPU blocks, the frame
 * watch map and physical memory (see hw/layout.ts), and the views every thread uses on it.
 *
 * `new Machine(options)` builds a machine; `Machine.attach(sab)` gives another thread (or the same
 * one) a working view of an existing machine: same memory, same registers, same TLBs, same
 * counters. Views keep only derived data (typed-array views, decoded configuration, IPI handler
 * registrations) in JavaScript; all machine state is in the buffer.
 *
 * CPUs leave `new Machine()` in IA-32e mode with paging enabled, CR3 = 0, CPL 0, PKRU 0:
 * CR0 = PE|MP|ET|NE|WP|PG, CR4 = PAE, EFER = SCE|LME|LMA|NXE. That is the state a 64-bit
 * kernel's early boot leaves behind (a shortcut: firmware and mode switches are not modelled).
 */

import { resolveConfig, ConfigError, type MachineConfig, type MachineOptions } from './config.ts';
import { computeLayout, H_JSON_LENGTH, H_JSON_OFFSET, H_MAGIC, H_VERSION, HEADER_BYTES, LAYOUT_VERSION, MAGIC, R_RNG, type MachineLayout } from './layout.ts';
import { PhysicalMemory, allocateMachineBuffer } from './phys.ts';
import { Cpu } from './cpu.ts';
import { Apic } from './apic.ts';
import { RESET_LONG_MODE } from './control-registers.ts';
import { Random } from './random.ts';

export class Machine {
  readonly sab: SharedArrayBuffer;
  readonly config: MachineConfig;
  readonly layout: MachineLayout;
  readonly phys: PhysicalMemory;
  readonly apic: Apic;
  private readonly cpuList: Cpu[];

  constructor(options: MachineOptions);
  /** @internal used by attach */
  constructor(options: MachineOptions, attachTo: SharedArrayBuffer, cfg: MachineConfig);
  constructor(options: MachineOptions, attachTo?: SharedArrayBuffer, attachedCfg?: MachineConfig) {
    const fresh = attachTo === undefined;
    this.config = fresh ? resolveConfig(options) : attachedCfg!;
    this.layout = computeLayout(this.config);
    if (fresh) {
      try {
        this.sab = allocateMachineBuffer(this.layout.totalBytes);
      } catch (e) {
        throw new ConfigError(`cannot allocate a ${this.layout.totalBytes}-byte machine: ${(e as Error).message}`);
      }
      writeHeader(this.sab, this.config);
    } else {
      this.sab = attachTo!;
    }
    this.phys = new PhysicalMemory(this.sab, this.layout.physBase, this.config.memoryBytes, this.layout.watchBase);
    this.cpuList = [];
    // The hardware's own pseudo-random choices (random TLB replacement) start from the seed.
    const hwRng = new Random(this.config.seed);
    for (let i = 0; i < this.config.cpus; i++) {
      const cpu = new Cpu(i, this.sab, this.layout.cpuBase + i * this.layout.cpu.blockBytes, this.layout.cpu, this.config, this.phys);
      cpu.stlb1gAllowed = this.config.gbPages;
      cpu.invpcidSupported = this.config.invpcid;
      if (fresh) {
        cpu.loadRegisters({ ...RESET_LONG_MODE });
        cpu.r[R_RNG] = hwRng.u32() | 0 || 1; // xorshift state must not be 0
      }
      cpu.refresh();
      this.cpuList.push(cpu);
    }
    this.apic = new Apic(this.cpuList);
  }

  /** A working view of the machine held in `sab` (built by `new Machine` on any thread). */
  static attach(sab: SharedArrayBuffer): Machine {
    if (!(sab instanceof SharedArrayBuffer)) throw new TypeError('Machine.attach takes the SharedArrayBuffer of a machine');
    if (sab.byteLength < HEADER_BYTES) throw new ConfigError('this SharedArrayBuffer is too small to hold a machine');
    const h = new Int32Array(sab, 0, 4);
    if (h[H_MAGIC] !== MAGIC) throw new ConfigError('this SharedArrayBuffer does not hold an mmulab machine (bad magic number)');
    if (h[H_VERSION] !== LAYOUT_VERSION) throw new ConfigError(`machine layout version ${h[H_VERSION]} is not the version this mmulab reads (${LAYOUT_VERSION})`);
    const len = h[H_JSON_LENGTH]!;
    const json = new TextDecoder().decode(new Uint8Array(sab, H_JSON_OFFSET, len).slice());
    const cfg = JSON.parse(json) as MachineConfig;
    const layout = computeLayout(cfg);
    if (layout.totalBytes !== sab.byteLength) throw new ConfigError(`machine header describes ${layout.totalBytes} bytes but the buffer has ${sab.byteLength}`);
    return new Machine({ memoryBytes: cfg.memoryBytes }, sab, cfg);
  }

  /** CPU `i` (0-based). */
  cpu(i: number): Cpu {
    const c = this.cpuList[i];
    if (c === undefined) throw new RangeError(`CPU ${String(i)} does not exist (this machine has CPUs 0..${this.cpuList.length - 1})`);
    return c;
  }

  get cpus(): readonly Cpu[] {
    return this.cpuList;
  }

  get cpuCount(): number {
    return this.cpuList.length;
  }

  /** Sum of every CPU's counters. */
  totals(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const cpu of this.cpuList) for (const [k, v] of Object.entries(cpu.counters())) out[k] = (out[k] ?? 0) + v;
    return out;
  }
}

function writeHeader(sab: SharedArrayBuffer, cfg: MachineConfig): void {
  const bytes = new TextEncoder().encode(JSON.stringify(cfg));
  if (H_JSON_OFFSET + bytes.length > HEADER_BYTES) throw new ConfigError('machine configuration is too large for the header');
  new Uint8Array(sab, H_JSON_OFFSET, bytes.length).set(bytes);
  const h = new Int32Array(sab, 0, 4);
  h[H_VERSION] = LAYOUT_VERSION;
  h[H_JSON_LENGTH] = bytes.length;
  Atomics.store(h, H_MAGIC, MAGIC);
}
