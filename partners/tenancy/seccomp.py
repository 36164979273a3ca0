"""The seccomp filter every sandbox runs under, compiled to BPF with libseccomp (pyseccomp).

It is a denylist on top of what namespaces and dropped capabilities already forbid: syscalls
a model never needs and that are the usual doors out of a container (ptrace and cross-process
memory access, mounting, new namespaces, keyrings, BPF, perf, kernel modules and kexec,
userfaultfd and io_uring, raw handles to the host's file systems, clock and swap control) get
EPERM. New namespaces are refused at `clone` by flag; `clone3`, whose flags hide behind a
pointer seccomp cannot read, answers ENOSYS so libc falls back to `clone`. `mknod` may still
make FIFOs, never device nodes. Other architectures' syscall tables (i386, x32) kill the
process: the filter only knows the native one.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile

import pyseccomp as sc

DENIED_SYSCALLS = (
    # debugging other processes and reading their memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # file systems and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "quotactl", "quotactl_fd",
    # kernel attack surface a model never needs
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "lookup_dcookie", "uselib", "nfsservctl", "vhangup", "iopl", "ioperm",
    # the machine's own state
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "syslog", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
)

_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_S_IFMT, _S_IFCHR, _S_IFBLK = 0o170000, 0o020000, 0o060000
_TIOCSTI = 0x5412


def build_filter() -> sc.SyscallFilter:
    """The sandbox's filter: allow by default, EPERM for the denylist and namespace flags."""
    deny = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except (OSError, RuntimeError, ValueError):
            continue  # a syscall this architecture does not have
    for flag in _NAMESPACE_FLAGS:
        flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for kind in (_S_IFCHR, _S_IFBLK):
        flt.add_rule(deny, "mknod", sc.Arg(1, sc.MASKED_EQ, _S_IFMT, kind))
        flt.add_rule(deny, "mknodat", sc.Arg(2, sc.MASKED_EQ, _S_IFMT, kind))
    flt.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    return flt


@functools.cache
def bpf_program() -> bytes:
    """The filter compiled to a BPF program, as bubblewrap's `--seccomp FD` reads it."""
    with tempfile.TemporaryFile() as f:
        build_filter().export_bpf(f)
        f.flush()
        f.seek(0)
        return f.read()


def bpf_fd() -> int:
    """A readable file descriptor holding the compiled program (a memfd; the caller closes it)."""
    fd = os.memfd_create("mediagate-seccomp", os.MFD_CLOEXEC)
    os.write(fd, bpf_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
