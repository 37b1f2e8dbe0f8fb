/**
 * A seccomp filter (classic BPF, as bubblewrap's `--seccomp FD` takes it) that refuses user
 * namespaces (DESIGN §5a: none inside a sandbox). As root the sandbox shares the host's user
 * namespace, where bubblewrap's `--disable-userns` does not apply, and an unprivileged uid may
 * otherwise `unshare -Ur` and be root there, over its own new namespaces.
 *
 * It refuses unshare(2) and clone(2) with CLONE_NEWUSER (EPERM), clone3(2) whole (ENOSYS: its
 * flags lie in memory a filter cannot read, and libc falls back to clone), and every system call
 * of another ABI (32-bit x86, x32), through which the same calls would pass unchecked.
 */

/** struct seccomp_data: the syscall number, the audit arch, then the arguments (64 bits each, little-endian). */
const NR = 0;
const ARCH = 4;
const ARG0_LOW = 16;

const CLONE_NEWUSER = 0x1000_0000;
const X32_SYSCALL_BIT = 0x4000_0000;
const EPERM = 1;
const ENOSYS = 38;
const RET_ALLOW = 0x7fff_0000;
const RET_ERRNO = 0x0005_0000;

const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;

interface Abi {
  audit: number;
  unshare: number;
  clone: number;
  clone3: number;
}

/** By Node's process.arch. */
const ABIS: Partial<Record<string, Abi>> = {
  x64: { audit: 0xc000_003e, unshare: 272, clone: 56, clone3: 435 },
  arm64: { audit: 0xc000_00b7, unshare: 97, clone: 220, clone3: 435 },
};

/** The program for this machine, or undefined where no ABI table is known. */
export function noUserNamespacesFilter(arch: string = process.arch): Buffer | undefined {
  const abi = ABIS[arch];
  if (!abi) return undefined;
  // [code, jump if true, jump if false, constant]; jumps count the instructions skipped.
  const program: [number, number, number, number][] = [
    [LD_W_ABS, 0, 0, ARCH],
    [JEQ_K, 1, 0, abi.audit],
    [RET_K, 0, 0, RET_ERRNO | EPERM],
    [LD_W_ABS, 0, 0, NR],
    [JGE_K, 0, 1, X32_SYSCALL_BIT],
    [RET_K, 0, 0, RET_ERRNO | EPERM],
    [JEQ_K, 0, 1, abi.clone3],
    [RET_K, 0, 0, RET_ERRNO | ENOSYS],
    [JEQ_K, 1, 0, abi.unshare],
    [JEQ_K, 0, 3, abi.clone],
    [LD_W_ABS, 0, 0, ARG0_LOW],
    [JSET_K, 0, 1, CLONE_NEWUSER],
    [RET_K, 0, 0, RET_ERRNO | EPERM],
    [RET_K, 0, 0, RET_ALLOW],
  ];
  const out = Buffer.alloc(program.length * 8);
  program.forEach(([code, jt, jf, k], i) => {
    out.writeUInt16LE(code, i * 8);
    out.writeUInt8(jt, i * 8 + 2);
    out.writeUInt8(jf, i * 8 + 3);
    out.writeUInt32LE(k >>> 0, i * 8 + 4);
  });
  return out;
}
