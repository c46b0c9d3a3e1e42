/**
 * kernel/errno.ts — error numbers (include/uapi/asm-generic/errno-base.h, errno.h). Kernel
 * functions return -errno like Linux; the syscall layer turns them into the error a program sees.
 */

export const EPERM = 1;
export const ENOENT = 2;
export const ESRCH = 3;
export const EINTR = 4;
export const EIO = 5;
export const ENXIO = 6;
export const E2BIG = 7;
export const EBADF = 9;
export const ECHILD = 10;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const ENODEV = 19;
export const EINVAL = 22;
export const EMFILE = 24;
export const ENOTTY = 25;
export const EFBIG = 27;
export const ENOSPC = 28;
export const ESPIPE = 29;
export const EPIPE = 32;
export const ERANGE = 34;
export const ENOSYS = 38;
export const EOVERFLOW = 75;
export const EOPNOTSUPP = 95;

export const ERRNO_NAMES: Record<number, string> = {
  [EPERM]: 'EPERM',
  [ENOENT]: 'ENOENT',
  [ESRCH]: 'ESRCH',
  [EINTR]: 'EINTR',
  [EIO]: 'EIO',
  [ENXIO]: 'ENXIO',
  [E2BIG]: 'E2BIG',
  [EBADF]: 'EBADF',
  [ECHILD]: 'ECHILD',
  [EAGAIN]: 'EAGAIN',
  [ENOMEM]: 'ENOMEM',
  [EACCES]: 'EACCES',
  [EFAULT]: 'EFAULT',
  [EBUSY]: 'EBUSY',
  [EEXIST]: 'EEXIST',
  [ENODEV]: 'ENODEV',
  [EINVAL]: 'EINVAL',
  [EMFILE]: 'EMFILE',
  [ENOTTY]: 'ENOTTY',
  [EFBIG]: 'EFBIG',
  [ENOSPC]: 'ENOSPC',
  [ESPIPE]: 'ESPIPE',
  [EPIPE]: 'EPIPE',
  [ERANGE]: 'ERANGE',
  [ENOSYS]: 'ENOSYS',
  [EOVERFLOW]: 'EOVERFLOW',
  [EOPNOTSUPP]: 'EOPNOTSUPP',
};

export function errnoName(e: number): string {
  return ERRNO_NAMES[Math.abs(e)] ?? `E${Math.abs(e)}`;
}

/** The error a syscall wrapper throws into a program (like libc setting errno and returning -1). */
export class SyscallError extends Error {
  constructor(
    readonly syscall: string,
    readonly errno: number,
  ) {
    super(`${syscall}: ${errnoName(errno)}`);
    this.name = 'SyscallError';
  }

  get code(): string {
    return errnoName(this.errno);
  }
}
