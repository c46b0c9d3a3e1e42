/**
 * kernel/signal.ts — delivering the signals memory faults raise (kernel/signal.c
 * force_sig_fault, arch/x86/mm/fault.c show_signal_msg).
 *
 * A program is a generator, so a signal is delivered by throwing a SignalError into it at the
 * faulting access: a program that catches it has "handled" the signal (as a handler that
 * longjmps out would); one that does not is killed, and the kernel logs the line Linux's
 * show_unhandled_signals prints ("prog[pid]: segfault at ADDR ip … error N").
 */

import type { Kernel } from './kernel.ts';
import type { Task } from './sched/core.ts';
import { SEGV_ACCERR, SEGV_MAPERR, SEGV_PKUERR, SIGBUS, SIGKILL, SIGSEGV, type SignalInfo } from './arch/x86/fault.ts';

export const SIGNAL_NAMES: Record<number, string> = { [SIGBUS]: 'SIGBUS', [SIGKILL]: 'SIGKILL', [SIGSEGV]: 'SIGSEGV' };
const CODE_NAMES: Record<string, string> = { [`${SIGSEGV}:${SEGV_MAPERR}`]: 'SEGV_MAPERR', [`${SIGSEGV}:${SEGV_ACCERR}`]: 'SEGV_ACCERR', [`${SIGSEGV}:${SEGV_PKUERR}`]: 'SEGV_PKUERR', [`${SIGBUS}:2`]: 'BUS_ADRERR' };

export class SignalError extends Error {
  constructor(
    readonly signo: number,
    readonly code: number,
    readonly addr: number,
    readonly why: string,
    /** The page-fault error code (for the kernel log line). */
    readonly errorCode = 0,
  ) {
    super(`${SIGNAL_NAMES[signo] ?? `signal ${signo}`} (${CODE_NAMES[`${signo}:${code}`] ?? code}) at 0x${addr.toString(16)}: ${why}`);
    this.name = 'SignalError';
  }

  get signame(): string {
    return SIGNAL_NAMES[this.signo] ?? `signal ${this.signo}`;
  }

  get codename(): string {
    return CODE_NAMES[`${this.signo}:${this.code}`] ?? String(this.code);
  }
}

export function signalFromFault(info: SignalInfo, errorCode: number): SignalError {
  return new SignalError(info.signo, info.code, info.addr, info.why, errorCode);
}

/** An unhandled signal killed `t`: log it the way Linux does and file a report. */
export function reportFatalSignal(k: Kernel, t: Task, e: SignalError): void {
  const a = e.addr.toString(16).padStart(16, '0');
  const line =
    e.signo === SIGSEGV
      ? `${t.comm}[${t.pid}]: segfault at ${e.addr.toString(16)} ip 0000000000000000 sp 0000000000000000 error ${e.errorCode.toString(16)} likely on CPU ${t.cpu} (core ${t.cpu}, socket 0)`
      : `${t.comm}[${t.pid}]: ${e.signame} (${e.codename}) at ${a}: ${e.why}`;
  k.report({ kind: 'signal', title: line, text: `${line}\n${t.comm}/${t.pid} killed by ${e.signame} (${e.codename}): ${e.why}`, pid: t.pid, comm: t.comm, data: { signo: e.signo, code: e.code, codename: e.codename, addr: e.addr, why: e.why } });
}
