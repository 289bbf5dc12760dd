"""The peak memory of this process alone, for tests that run a command in a child process."""

from __future__ import annotations


def peak_mb() -> int:
    """This process's peak resident memory, in MiB, from Linux's ``VmHWM``.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps the peak of the image a process
    replaced at ``exec`` (``exec_mmap`` saves the old memory's high-water mark), and Python
    starts a child with ``vfork``, so a child of a large test run reports the parent's peak.
    ``VmHWM`` is the high-water mark of the child's own memory since its ``exec``.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
