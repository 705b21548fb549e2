"""A filesystem that loses what was not fsynced, as a disk does at a power cut.

    powercut_fs.py BACKING MOUNTPOINT

Mounts MOUNTPOINT (FUSE, through the stock `fusepy`) over the directory BACKING. Written
data stays in this process's memory, where reads see it, until the file is fsynced
(fsync or fdatasync): only then does it reach BACKING, and BACKING is fsynced. Creating the
file `.powercut` at the top of the mount is the power cut: everything not yet fsynced is
dropped, and every later operation fails with EIO, until the mount is unmounted. BACKING then
holds what a disk would have held.

The model is strict for data (unsynced writes and truncations are all lost, none partly
kept) and lenient for names: creating, renaming and deleting files reach BACKING at once, as
if the filesystem's journal committed them synchronously. Prints "ready" once mounted.
"""

import errno
import os
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

CUT = "/.powercut"


class PowerCutFs(Operations):
    def __init__(self, backing):
        self.backing = backing
        # path -> [content: bytearray, dirty: set of (offset, length), truncated: bool]
        self.volatile = {}
        self.cut = False
        self.fh = 0

    def _real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _alive(self):
        if self.cut:
            raise FuseOSError(errno.EIO)

    def _load(self, path):
        state = self.volatile.get(path)
        if state is None:
            with open(self._real(path), "rb") as f:
                state = [bytearray(f.read()), set(), False]
            self.volatile[path] = state
        return state

    def getattr(self, path, fh=None):
        self._alive()
        try:
            st = os.lstat(self._real(path))
        except FileNotFoundError:
            raise FuseOSError(errno.ENOENT)
        attrs = {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
            "st_ctime")}
        if path in self.volatile:
            attrs["st_size"] = len(self.volatile[path][0])
        return attrs

    def readdir(self, path, fh):
        self._alive()
        return [".", ".."] + os.listdir(self._real(path))

    def statfs(self, path):
        st = os.statvfs(self._real(path))
        return {k: getattr(st, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def access(self, path, amode):
        self._alive()
        if not os.path.exists(self._real(path)):
            raise FuseOSError(errno.ENOENT)

    def _on_backing(self, op, path, *args):
        # Names and attributes reach BACKING at once (see the module's doc).
        self._alive()
        op(self._real(path), *args)

    def mkdir(self, path, mode):
        self._on_backing(os.mkdir, path, mode)

    def mknod(self, path, mode, dev):
        # The uplink's Unix socket.
        self._on_backing(os.mknod, path, mode, dev)

    def rmdir(self, path):
        self._on_backing(os.rmdir, path)

    def chmod(self, path, mode):
        self._on_backing(os.chmod, path, mode)

    def chown(self, path, uid, gid):
        self._on_backing(os.chown, path, uid, gid)

    def utimens(self, path, times=None):
        self._on_backing(os.utime, path, times)

    def _next_fh(self):
        self.fh += 1
        return self.fh

    def create(self, path, mode, fi=None):
        if path == CUT:
            # Everything unsynced is gone; from now on the disk is dead.
            self.cut = True
            self.volatile.clear()
            print("cut", flush=True)
            raise FuseOSError(errno.EIO)
        self._alive()
        fd = os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.close(fd)
        self.volatile[path] = [bytearray(), set(), True]
        return self._next_fh()

    def open(self, path, flags):
        self._alive()
        if not os.path.exists(self._real(path)):
            raise FuseOSError(errno.ENOENT)
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return self._next_fh()

    def read(self, path, size, offset, fh):
        self._alive()
        if path in self.volatile:
            return bytes(self.volatile[path][0][offset:offset + size])
        with open(self._real(path), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write(self, path, data, offset, fh):
        self._alive()
        content, dirty, _ = self._load(path)
        if len(content) < offset:
            content.extend(b"\0" * (offset - len(content)))
        content[offset:offset + len(data)] = data
        dirty.add((offset, len(data)))
        return len(data)

    def truncate(self, path, length, fh=None):
        self._alive()
        state = self._load(path)
        content = state[0]
        if length < len(content):
            del content[length:]
        else:
            content.extend(b"\0" * (length - len(content)))
        state[2] = True

    def fsync(self, path, datasync, fh):
        self._alive()
        state = self.volatile.pop(path, None)
        if state is None:
            return 0
        content, dirty, truncated = state
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            for offset, length in sorted(dirty):
                os.pwrite(fd, bytes(content[offset:offset + length]), offset)
            if truncated or os.fstat(fd).st_size > len(content):
                os.ftruncate(fd, len(content))
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def flush(self, path, fh):
        self._alive()
        return 0

    def release(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        self._alive()
        return 0

    def unlink(self, path):
        self._alive()
        os.unlink(self._real(path))
        self.volatile.pop(path, None)

    def rename(self, old, new):
        self._alive()
        os.rename(self._real(old), self._real(new))
        if old in self.volatile:
            self.volatile[new] = self.volatile.pop(old)


def main():
    backing, mountpoint = sys.argv[1], sys.argv[2]

    def announce():
        # FUSE() blocks while mounted; say so once the mount answers.
        for _ in range(200):
            if os.path.ismount(mountpoint):
                print("ready", flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=announce, daemon=True).start()
    FUSE(PowerCutFs(os.path.abspath(backing)), mountpoint, foreground=True, nothreads=True,
         allow_other=True, default_permissions=False)


if __name__ == "__main__":
    main()
