/**
 * A seccomp filter (classic BPF, as bubblewrap's `--seccomp FD` takes it) that refuses user
 * namespaces (DESIGN §5a: none inside a sandbox). As root the sandbox shares the host's user
 * namespace, where bubblewrap's `--disable-userns` does not apply, and an unprivileged uid may
 * otherwise `unshare -Ur` and be root there, over its own new namespaces.
 *
 * It refuses unshare(2) and clone(2) with CLONE_NEWUSER (EPERM), clone3(2) whole (ENOSYS: its
 * flags lie in memory a filter cannot read, and libc falls back to clone), and every system call
 * of another ABI (32-bit x86, x32), through which the same calls would pass unchecked.
 *
 * It also refuses (EPERM) the btrfs ioctls that make a subvolume or a snapshot, which btrfs lets
 * any owner of a directory use: a subvolume inside the sandbox's data dir would have a qgroup of
 * its own, outside the limit that is the sandbox's disk (DESIGN §8b).
 */

/** struct seccomp_data: the syscall number, the audit arch, then the arguments (64 bits each, little-endian). */
const NR = 0;
const ARCH = 4;
const ARG0_LOW = 16;
const ARG1_LOW = 24;

const CLONE_NEWUSER = 0x1000_0000;
const X32_SYSCALL_BIT = 0x4000_0000;
const EPERM = 1;
const ENOSYS = 38;

/**
 * _IOW(0x94, nr, 4096-byte args): BTRFS_IOC_SNAP_CREATE (1), _SUBVOL_CREATE (14),
 * _SNAP_CREATE_V2 (23), _SUBVOL_CREATE_V2 (24). The kernel reads the command as 32 bits, so the
 * low word of the argument is what it acts on.
 */
const BTRFS_CREATE_IOCTLS = [0x5000_9401, 0x5000_940e, 0x5000_9417, 0x5000_9418] as const;
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
  ioctl: number;
}

/** By Node's process.arch. */
const ABIS: Partial<Record<string, Abi>> = {
  x64: { audit: 0xc000_003e, unshare: 272, clone: 56, clone3: 435, ioctl: 16 },
  arm64: { audit: 0xc000_00b7, unshare: 97, clone: 220, clone3: 435, ioctl: 29 },
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
    [JEQ_K, 0, 4, abi.clone],
    [LD_W_ABS, 0, 0, ARG0_LOW],
    [JSET_K, 0, 1, CLONE_NEWUSER],
    [RET_K, 0, 0, RET_ERRNO | EPERM],
    [RET_K, 0, 0, RET_ALLOW],
    [JEQ_K, 0, 6, abi.ioctl],
    [LD_W_ABS, 0, 0, ARG1_LOW],
    [JEQ_K, 3, 0, BTRFS_CREATE_IOCTLS[0]],
    [JEQ_K, 2, 0, BTRFS_CREATE_IOCTLS[1]],
    [JEQ_K, 1, 0, BTRFS_CREATE_IOCTLS[2]],
    [JEQ_K, 0, 1, BTRFS_CREATE_IOCTLS[3]],
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
