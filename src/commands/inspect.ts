/**
 * src/commands/inspect.ts — `mmulab maps|smaps|pagemap|ptdump`: the address space of one process
 * of a scenario (a workload of mmulab run, a module or a lackey trace), as Linux shows it:
 *
 *   maps      /proc/PID/maps                  (kernel/fs/proc/task_mmu.ts proc_pid_maps)
 *   smaps     /proc/PID/smaps, or smaps_rollup with --rollup
 *   pagemap   /proc/PID/pagemap, decoded: one line per page (address, entry, PFN, flags),
 *             since the file itself is binary; present pages only unless --all
 *   ptdump    debugfs page_tables/current_user (kernel/arch/x86/mm/dump_pagetables.ts)
 *
 * When: by default at the end — every thread parks when its program returns, before it exits,
 * so each process keeps its address space as its program left it (a parent waiting for a parked
 * child is caught in its wait) — or after --at-step N scheduling steps, wherever the processes
 * are then (no task is inside an engine step between steps, so the views see a consistent state).
 * Which process: --pid, --process (its comm), or the scenario's main one (the touch process, the
 * fork parent, the binder server, the lackey replay, a module's first program).
 *
 * With --json each command prints the view parsed into records, with the text as Linux prints
 * it in "text", and the options that shaped the scenario (docs/schemas/inspect.schema.json, one
 * schema for the four commands, told apart by "view").
 */

import type { Command } from 'commander';
import { pagemap_read, proc_pid_maps, proc_pid_smaps, proc_pid_smaps_rollup, PM_FILE, PM_MMAP_EXCLUSIVE, PM_PFRAME_MASK, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP, PM_UFFD_WP, PM_GUARD_REGION } from '../../kernel/fs/proc/task_mmu.ts';
import { ptdump_walk_pgd_level_debugfs } from '../../kernel/arch/x86/mm/dump_pagetables.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import { EngineError } from '../../hw/engine.ts';
import { buildScenario, runScenario, type RunOutcome, type Scenario } from '../experiments/scenario.ts';
import { BUILTIN_WORKLOADS } from '../experiments/scenario.ts';
import { addScenarioOptions, MODULE_HELP, recordedOptions, scenarioOptions, type ScenarioCliOptions } from './run.ts';
import { EXIT_FINDING, parseIntOption, UsageError, type Io } from './common.ts';

export const VIEWS = ['maps', 'smaps', 'pagemap', 'ptdump'] as const;
export type View = (typeof VIEWS)[number];

interface InspectCliOptions extends ScenarioCliOptions {
  pid?: number;
  process?: string;
  atStep?: number;
  rollup?: boolean;
  all?: boolean;
}

const DESCRIPTIONS: Record<View, string> = {
  maps: "print a process's /proc/PID/maps",
  smaps: "print a process's /proc/PID/smaps (or smaps_rollup with --rollup)",
  pagemap: "print a process's /proc/PID/pagemap decoded: address, entry, PFN and flags of each page",
  ptdump: "print a process's page tables as the x86 ptdump (debugfs page_tables/current_user)",
};

const EXAMPLES: Record<View, string> = {
  maps: `  mmulab maps binder                          the binder server at the end of its program
  mmulab maps --workload fork --process fork-child
  mmulab maps --lackey trace.txt`,
  smaps: `  mmulab smaps fork                           the parent: frames still shared with the child are Shared_*
  mmulab smaps fork --process fork-child --rollup
  mmulab smaps zipf --pages 64 --at-step 20`,
  pagemap: `  mmulab pagemap sequential --pages 16 --accesses 400
  mmulab pagemap binder --design fault --all
  mmulab pagemap --module myprog.ts --json`,
  ptdump: `  mmulab ptdump sequential --pages 600
  mmulab ptdump binder --process binder_client
  mmulab ptdump --lackey trace.txt`,
};

export function register(program: Command, io: Io): void {
  for (const view of VIEWS) {
    const cmd = program.command(view).description(DESCRIPTIONS[view]).argument('[workload]', `built-in workload: ${BUILTIN_WORKLOADS.join(', ')} (default sequential)`);
    addScenarioOptions(cmd)
      .option('--pid <n>', 'the process to show, by pid', parseIntOption('--pid', 1, 2 ** 31 - 1))
      .option('--process <name>', "the process to show, by name (its comm)")
      .option('--at-step <n>', 'look after this many scheduling steps instead of at the end (with --engine parallel a step is one CPU\'s turn)', parseIntOption('--at-step', 0, 1e12));
    if (view === 'smaps') cmd.option('--rollup', 'print smaps_rollup (all VMAs summed)');
    if (view === 'pagemap') cmd.option('--all', 'print every page of every VMA, not only those with a non-zero entry');
    cmd.addHelpText('after', `\n${MODULE_HELP}\n\nExamples:\n${EXAMPLES[view]}`).action(async (positional: string | undefined, o: InspectCliOptions) => {
      if (o.pid !== undefined && o.process !== undefined) throw new UsageError('give either --pid or --process, not both');
      const so = await scenarioOptions(positional, o, true);
      const s = buildScenario(so);
      let outcome: RunOutcome;
      try {
        outcome = runScenario(s, o.atStep ?? o.maxSteps, o.engine);
      } catch (e) {
        if (e instanceof EngineError) {
          io.err(`mmulab: the workload cannot go on: ${e.message}\n`);
          io.exitCode = EXIT_FINDING;
          return;
        }
        throw e;
      }
      if (o.atStep === undefined && outcome.reason === 'maxSteps') {
        io.err(`mmulab: the workload did not reach its end within --max-steps ${o.maxSteps}\n`);
        io.exitCode = EXIT_FINDING;
        return;
      }
      const killed = killedProcess(s, o);
      if (killed) {
        io.err(`mmulab: ${killed}\n`);
        io.exitCode = EXIT_FINDING;
        return;
      }
      const { pid, comm } = pickProcess(s, o);
      const at = { reason: outcome.reason === 'maxSteps' ? 'step' : 'end', steps: outcome.steps };
      const k = s.k;
      let text: string;
      let records: unknown;
      switch (view) {
        case 'maps':
          text = proc_pid_maps(k, pid);
          records = parseMaps(text);
          break;
        case 'smaps':
          text = o.rollup ? proc_pid_smaps_rollup(k, pid) : proc_pid_smaps(k, pid);
          records = parseSmaps(text);
          break;
        case 'pagemap': {
          const entries = decodePagemap(k, pid, !!o.all);
          text = pagemapText(pid, comm, entries);
          records = entries.map((e) => ({ addr: e.addr, entry: e.entry, pfn: e.pfn, flags: e.flags }));
          break;
        }
        case 'ptdump':
          text = ptdump_walk_pgd_level_debugfs(k, pid);
          records = parsePtdump(text);
          break;
      }
      if (o.json) {
        const key = view === 'pagemap' ? 'pages' : view === 'ptdump' ? 'lines' : 'vmas';
        const doc = { schema: 'mmulab.inspect/1', view: view === 'smaps' && o.rollup ? 'smaps_rollup' : view, workload: so.workload, options: recordedOptions(so, o), pid, comm, at, [key]: records, text };
        io.out(JSON.stringify(doc, null, 2) + '\n');
      } else io.out(text);
    });
  }
}

/** The process to show: --pid, --process, or the scenario's main one; it must be alive now. */
function pickProcess(s: Scenario, o: InspectCliOptions): { pid: number; comm: string } {
  const k = s.k;
  const live = [...k.groups.keys()].map((pid) => ({ pid, comm: commOf(k, pid) }));
  const list = live.length ? live.map((p) => `${p.pid} ${p.comm}`).join(', ') : 'none';
  const when = o.atStep !== undefined ? `at step ${o.atStep}` : 'at the end';
  if (o.pid !== undefined) {
    const p = live.find((x) => x.pid === o.pid);
    if (!p) throw new UsageError(`--pid ${o.pid}: no such process ${when} (processes: ${list})`);
    return p;
  }
  const name = o.process ?? s.defaultProcess;
  const p = live.find((x) => x.comm === name);
  if (!p) throw new UsageError(`${o.process !== undefined ? '--process ' : 'process '}${name}: not running ${when} (processes: ${list})`);
  return p;
}

/** The wanted process died before its end (a program error, a signal): say so (a finding, not bad usage). */
function killedProcess(s: Scenario, o: InspectCliOptions): string | null {
  const name = o.pid === undefined ? (o.process ?? s.defaultProcess) : undefined;
  for (const p of s.monitor.processes.values()) {
    if (s.k.groups.has(p.pid) || p.error === undefined) continue;
    if (o.pid === p.pid || p.comm === name) return `${p.comm}[${p.pid}] did not reach the end of its program: ${p.error}`;
  }
  return null;
}

function commOf(k: Kernel, tgid: number): string {
  const leader = k.tasks.get(tgid);
  if (leader) return leader.comm;
  for (const t of k.tasks.values()) if (t.tgid === tgid) return t.comm;
  return '?';
}

// ---- maps and smaps as records ----------------------------------------------------------------

const MAPS_LINE = /^([0-9a-f]{8,})-([0-9a-f]{8,}) ([r-][w-][x-][sp]) ([0-9a-f]{8,}) ([0-9a-f]{2,}):([0-9a-f]{2,}) (\d+) ?(?: +(.*))?$/;

export interface MapsRecord {
  start: number;
  end: number;
  perms: string;
  offset: number;
  dev: string;
  inode: number;
  name: string | null;
}

export function parseMapsLine(line: string): MapsRecord | null {
  const m = MAPS_LINE.exec(line);
  if (!m) return null;
  return { start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, offset: parseInt(m[4]!, 16), dev: `${m[5]}:${m[6]}`, inode: Number(m[7]), name: m[8] ?? null };
}

function parseMaps(text: string): MapsRecord[] {
  return text.split('\n').filter(Boolean).map((l) => parseMapsLine(l)!).filter(Boolean);
}

export interface SmapsRecord extends MapsRecord {
  /** Each "Label: N kB" field in kB, THPeligible and ProtectionKey as numbers. */
  fields: Record<string, number>;
  vmFlags: string[];
}

function parseSmaps(text: string): SmapsRecord[] {
  const out: SmapsRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const head = parseMapsLine(line);
    if (head) {
      out.push({ ...head, fields: {}, vmFlags: [] });
      continue;
    }
    const cur = out[out.length - 1];
    if (!cur) continue;
    const f = /^(\w+):\s+(.*?)\s*$/.exec(line);
    if (!f) continue;
    if (f[1] === 'VmFlags') cur.vmFlags = f[2]!.split(' ').filter(Boolean);
    else cur.fields[f[1]!] = parseInt(f[2]!, 10);
  }
  return out;
}

// ---- pagemap, decoded -------------------------------------------------------------------------

export interface PagemapRecord {
  /** Virtual address of the page (hex, no 0x). */
  addr: string;
  /** The raw 64-bit entry (hex, 16 digits). */
  entry: string;
  /** PFN when present, else null. */
  pfn: number | null;
  flags: string[];
}

const PM_FLAGS: [bigint, string][] = [
  [PM_PRESENT, 'present'],
  [PM_SWAP, 'swapped'],
  [PM_FILE, 'file-or-shared-anon'],
  [PM_GUARD_REGION, 'guard'],
  [PM_UFFD_WP, 'uffd-wp'],
  [PM_MMAP_EXCLUSIVE, 'exclusive'],
  [PM_SOFT_DIRTY, 'soft-dirty'],
];

/** Every page of every VMA of `pid` (pagemap_read as CAP_SYS_ADMIN, so PFNs are shown). */
function decodePagemap(k: Kernel, pid: number, all: boolean): PagemapRecord[] {
  const out: PagemapRecord[] = [];
  const mm = k.tasks.get(pid)?.mm;
  if (!mm) return out;
  for (const vma of mm.vmas()) {
    const pages = (vma.vm_end - vma.vm_start) / 4096;
    const b = pagemap_read(k, pid, (vma.vm_start / 4096) * 8, pages * 8, { privileged: true });
    const dv = new DataView(b.buffer, b.byteOffset, b.length);
    for (let i = 0; i < b.length / 8; i++) {
      const e = dv.getBigUint64(i * 8, true);
      if (e === 0n && !all) continue;
      const present = (e & PM_PRESENT) !== 0n;
      out.push({
        addr: (vma.vm_start + i * 4096).toString(16),
        entry: e.toString(16).padStart(16, '0'),
        pfn: present ? Number(e & PM_PFRAME_MASK) : null,
        flags: PM_FLAGS.filter(([bit]) => (e & bit) !== 0n).map(([, name]) => name),
      });
    }
  }
  return out;
}

function pagemapText(pid: number, comm: string, entries: PagemapRecord[]): string {
  const lines = [
    `# /proc/${pid}/pagemap of ${comm}, decoded: bits 0-54 PFN (when present), 55 soft-dirty, 56 exclusively mapped, 57 uffd-wp, 58 guard region, 61 file page or shared anonymous, 62 swapped, 63 present`,
    `# ${'address'.padEnd(12)}  ${'entry'.padEnd(16)}  ${'pfn'.padEnd(9)}  flags`,
  ];
  for (const e of entries) lines.push(`  ${e.addr.padStart(12, '0')}  ${e.entry}  ${(e.pfn === null ? '-' : '0x' + e.pfn.toString(16)).padEnd(9)}  ${e.flags.join(',') || '-'}`);
  return lines.join('\n') + '\n';
}

// ---- ptdump as records ------------------------------------------------------------------------

const PTDUMP_LINE = /^0x([0-9a-f]{16})-0x([0-9a-f]{16}) {3}( *\d+[BKMGTPE]) (.{30})(pgd|p4d|pud|pmd|pte)$/;

export interface PtdumpRecord {
  marker?: string;
  start?: string;
  end?: string;
  size?: string;
  flags?: string[];
  present?: boolean;
  level?: string;
}

function parsePtdump(text: string): PtdumpRecord[] {
  const out: PtdumpRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const mk = /^---\[ (.*) \]---$/.exec(line);
    if (mk) {
      out.push({ marker: mk[1]! });
      continue;
    }
    const m = PTDUMP_LINE.exec(line);
    if (!m) continue;
    const flags = m[4]!.split(' ').filter(Boolean);
    out.push({ start: m[1]!, end: m[2]!, size: m[3]!.trim(), flags, present: flags.length > 0, level: m[5]! });
  }
  return out;
}
