"""The decode-once cache: preprocessed uint8 pixels per (dataset files, pixel preprocessing).

Decoding JPEGs is the wall on a GPU, so every image is decoded and resized once and kept as a
memory-mapped uint8 array that every checkpoint and every later run reuses. One cache serves all
architectures with the same size/interpolation/resize mode (mean and std are applied on device).
Entries are written to a temp file and renamed, so a killed build leaves no half cache.

One builder per entry, across processes and hosts: ranks that ask for the same uncached entry at
once (every rank of a node, every node of a job on a shared filesystem) take turns on a lock file in
the entry folder; the first builds, the others wait and then memory-map what it built. The lock is
an `O_CREAT | O_EXCL` file holding the builder's host, pid and a token, because that is atomic on
local disks and on NFSv3+, while `flock` on NFS or Lustre is, depending on the mount, node-local,
emulated or unsupported, and fails silently in the worst case. A lock is abandoned (and taken over)
when its builder is on this host and dead, or when its heartbeat (the builder touches the file
between batches) has not changed for `LOCK_STALE_S` as seen by the waiter's own clock (so clock skew
between hosts does not matter), or its mtime is three times that old. A double build after a
mistaken takeover costs time, not correctness: every build writes a private temp file and renames it
into place.

An entry can also be built in n pieces by n processes or array tasks (`build_piece`, `evalkit cache
build --shard i/n`): piece i holds images [i*N/n, (i+1)*N/n) in `<entry>/pieces/<i>-of-<n>.npy`,
each written atomically. Whoever next needs the entry and finds a complete set (the last piece
builder, through `assemble`, or `decoded_images`) joins them under the build lock into `pixels.npy`,
byte-identical to a single build, and removes the pieces.

A full, over-quota or read-only cache disk is said, never a crash: an entry's file gets its whole size
on disk (`posix_fallocate`, else zeros written) before any pixel goes into its memory map, since a
store into a memory-mapped page the disk has no room for is a SIGBUS that kills the process. The
cache only makes runs faster, so a run whose cache disk refuses the entry warns once and decodes
into memory instead; building the cache itself (`required=True`: `evalkit cache build`, pieces)
fails with a `CacheWriteError` naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import pickle
import shutil
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from evalkit.atomic import (
    HOST,
    WriteError,
    _pid_alive,
    atomic_write,
    atomic_write_text,
    disk_problem,
    remove_stale_temps,
)
from evalkit.data.preprocess import PreprocessCfg, pixel_transform
from evalkit.data.sources import DataError, ImageSource
from evalkit.errors import UsageError, is_disk_error
from evalkit.progress import WARNINGS

LOCK_FILE = "build.lock"
PIECES_DIR = "pieces"
LOCK_HEARTBEAT_S = 10.0  # a builder touches its lock at least this often while it decodes
LOCK_STALE_S = 600.0  # a lock whose heartbeat stood still this long (waiter's clock) is abandoned
_ZEROS_CHUNK = 1 << 24  # bytes written per call where the file system cannot allocate (no fallocate)

log = logging.getLogger(__name__)


class CacheWriteError(WriteError):
    """The cache's disk refused an entry (full, quota, read-only, permissions): names the file and what
    to do. A WriteError, so a UserError (one line, exit 2) and an OSError."""


def cache_write_error(e: OSError, where: Path) -> CacheWriteError:
    """`e` (a disk error while writing the cache) as a CacheWriteError naming its file (or `where`)."""
    if isinstance(e, CacheWriteError):
        return e
    path = Path(e.filename) if e.filename else where
    err = CacheWriteError(e.errno, f"{path}: cannot write the image cache ({disk_problem(e)}). Free space there "
                                   "or point --cache-dir at another folder (`evalkit run --no-cache` decodes into "
                                   "memory instead).")
    err.filename = str(path)
    return err


@contextlib.contextmanager
def _cache_writes(where: Path) -> Iterator[None]:
    """A disk error inside is a CacheWriteError naming its file (or `where`); an empty `where` goes."""
    try:
        yield
    except OSError as e:
        if not is_disk_error(e):
            raise
        with contextlib.suppress(OSError):
            where.rmdir()  # the entry folder this attempt made, if nothing else is in it
        raise cache_write_error(e, where) from None


def _reserve(fd: int, start: int, nbytes: int) -> None:
    """Allocate bytes [start, start+nbytes) of an open file on disk now: a full disk is an OSError
    here (ENOSPC), not a SIGBUS later at the first store into a memory-mapped page it has no room for."""
    if nbytes <= 0:
        return
    try:
        os.posix_fallocate(fd, start, nbytes)
        return
    except AttributeError:  # no posix_fallocate on this platform (macOS)
        pass
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    zeros = bytes(min(_ZEROS_CHUNK, nbytes))  # the file system cannot allocate: write the zeros
    done = 0
    while done < nbytes:
        done += os.pwrite(fd, zeros[: min(len(zeros), nbytes - done)], start + done)


def _reserved_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 .npy file of `shape` whose pixels already have their space on disk, memory-mapped
    for writing (same bytes as `np.lib.format.open_memmap`: same header, zeros until written)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    start, nbytes = arr.offset, arr.nbytes
    del arr  # the header and the file's size are written; no page of pixels has been touched
    fd = os.open(path, os.O_RDWR)
    try:
        _reserve(fd, start, nbytes)
    finally:
        os.close(fd)
    return np.load(path, mmap_mode="r+")


def default_cache_dir() -> Path:
    return Path(os.environ.get("EVALKIT_CACHE", Path.home() / ".cache" / "evalkit" / "images"))


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (SLURM and cgroup cpusets bind ranks to a few
    cores of a many-core node, which `os.cpu_count()` ignores), capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


class _Decode(Dataset):
    def __init__(self, source: ImageSource, cfg: PreprocessCfg) -> None:
        self.source, self.cfg, self.tf = source, cfg, None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        if self.tf is None:
            self.tf = pixel_transform(self.cfg)
        try:
            return i, self.tf(self.source.open(i)), ""
        except DataError as e:
            return i, torch.zeros(3, self.cfg.size, self.cfg.size, dtype=torch.uint8), str(e)


def _collate(batch):
    idx, imgs, errs = zip(*batch)
    return list(idx), torch.stack(imgs), list(errs)


def entry_dir(source: ImageSource, cfg: PreprocessCfg, cache_dir: Path) -> Path:
    h = hashlib.sha1(f"{source.fingerprint}|{len(source)}|{cfg.pixel_key}".encode()).hexdigest()[:20]
    return cache_dir / f"{h}-{cfg.pixel_key}"


_preloaded = False


def _start_method(job: _Decode, num_workers: int) -> str:
    """How decode workers run: "in-process", "fork", "forkserver", "spawn" or "threads".

    `fork` copies whatever locks the process's other threads hold at that instant (the engine's
    checkpoint prefetch and results fsync threads are usually alive here), so a forked worker can
    hang on its first import or allocation. So: `fork` only while this is the process's only Python
    thread (cheapest: nothing to import again); otherwise a `forkserver` (`spawn` where there is
    none), a clean single-threaded process that forks the workers and gets the job pickled. Every
    evalkit reader's opener pickles; one that doesn't (a lambda) is decoded by threads of this
    process instead (PIL decodes and resizes without the GIL, so they scale, if less than processes).
    As with any forkserver/spawn worker (Python 3.14's default), a script calling evalkit needs the
    `if __name__ == "__main__":` guard: the workers import the main module.
    """
    if num_workers <= 0:
        return "in-process"
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        return "fork"
    try:
        pickle.dumps(job)
    except Exception:
        return "threads"
    return "forkserver" if "forkserver" in methods else "spawn"


def _context(method: str) -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context(method)
    global _preloaded
    if method == "forkserver" and not _preloaded:
        # The server imports torch and open_clip once (seconds); each worker is then a cheap fork of
        # it, also for later decodes in this process. No effect once a forkserver runs here already.
        from multiprocessing import forkserver

        have = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        ctx.set_forkserver_preload(list(dict.fromkeys([*have, "evalkit.data.cache", "open_clip.transform"])))
        _preloaded = True
    return ctx


def _threaded_batches(job: _Decode, workers: int, batch_size: int = 64) -> Iterator[tuple]:
    """The DataLoader's batches, in order, decoded by `workers` threads with a bounded read-ahead."""
    n = len(job)
    starts = range(0, n, batch_size)

    def batch(start: int) -> tuple:
        return _collate([job[i] for i in range(start, min(start + batch_size, n))])

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evalkit-decode")
    try:
        ahead = deque(pool.submit(batch, s) for s in starts[: 2 * workers])
        for k in range(len(starts)):
            item = ahead.popleft().result()
            if k + 2 * workers < len(starts):
                ahead.append(pool.submit(batch, starts[k + 2 * workers]))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_all(source: ImageSource, cfg: PreprocessCfg, out: np.ndarray, num_workers: int, progress: bool,
               on_batch: Callable[[], None] | None = None) -> None:
    """Fill `out` [N, 3, S, S] uint8 with the preprocessed images of `source`; `on_batch()` after each batch."""
    # Workers get only what decoding needs: `meta` may hold lambdas (segmentation's mask openers).
    job = _Decode(dataclasses.replace(source, targets=[], meta={}, classnames=None, templates=None), cfg)
    method = _start_method(job, num_workers)
    if method == "threads":
        batches = _threaded_batches(job, num_workers)
    else:
        workers = 0 if method == "in-process" else num_workers
        loader = DataLoader(
            job, batch_size=64, num_workers=workers, collate_fn=_collate,
            multiprocessing_context=_context(method) if workers else None,
            persistent_workers=False, prefetch_factor=4 if workers else None,
        )
        batches = iter(loader)  # workers start here: before tqdm's monitor thread exists
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(source), desc=f"decode {Path(source.name).name}", unit="img", file=sys.stderr)
    for idx, imgs, errs in batches:
        bad = [e for e in errs if e]
        if bad:
            raise DataError(bad[0])
        out[idx[0] : idx[-1] + 1] = imgs.numpy()
        if bar:
            bar.update(len(idx))
        if on_batch:
            on_batch()
    if bar:
        bar.close()


class _BuildLock:
    """This process's claim on building one cache entry (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex}"
        self.beaten = 0.0

    def acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"host": HOST, "pid": os.getpid(), "token": self.token,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
        except BaseException:  # a full disk: an empty lock would keep every other process waiting LOCK_STALE_S
            self.path.unlink(missing_ok=True)
            raise
        self.beaten = time.monotonic()
        return True

    def beat(self, force: bool = False) -> None:
        """Show waiters this builder is alive (a new mtime), at most every LOCK_HEARTBEAT_S."""
        now = time.monotonic()
        if force or now - self.beaten >= LOCK_HEARTBEAT_S:
            self.beaten = now
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if it is still ours (a waiter may have judged it abandoned and taken it)."""
        try:
            if json.loads(self.path.read_bytes()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def _lock_state(path: Path) -> tuple[bytes, tuple, dict] | None:
    """(contents, what a heartbeat changes, parsed holder) of a lock file; None when there is none."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(raw)
        holder = holder if isinstance(holder, dict) else {}
    except ValueError:  # being written this instant, or garbage: judged by its heartbeat alone
        holder = {}
    return raw, (st.st_ino, st.st_mtime_ns, st.st_size, raw), holder


class _LockWatch:
    """A waiter's view of the lock it waits on: is its builder gone?"""

    def __init__(self) -> None:
        self.seen: tuple | None = None
        self.since = time.monotonic()

    def abandoned(self, sig: tuple, holder: dict) -> bool:
        pid = holder.get("pid")
        if holder.get("host") == HOST and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
            return True  # this host's builder died (killed, OOM): no need to wait for its heartbeat
        if time.time() - sig[1] / 1e9 > 3 * LOCK_STALE_S:
            return True  # left long ago (a lost node): no live builder's beat is this old, whatever the skew
        if sig != self.seen:  # a heartbeat, or a new holder: wait a full period from now
            self.seen, self.since = sig, time.monotonic()
            return False
        return time.monotonic() - self.since > LOCK_STALE_S


def _break_lock(path: Path, raw: bytes) -> None:
    """Remove the abandoned lock whose contents were `raw`, and never a fresh one that replaced it."""
    grave = path.with_name(f"{path.name}.stale-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, grave)  # atomic: of several waiters breaking the same lock, one gets it
    except FileNotFoundError:
        return
    try:
        if grave.read_bytes() != raw:  # a new builder's lock appeared since we looked: give it back
            try:
                os.link(grave, path)  # fails if yet another lock exists by now (both then build)
            except OSError:
                pass
    finally:
        grave.unlink(missing_ok=True)


def _complete(final: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The finished entry, memory-mapped; None if there is none (or it is not for this shape)."""
    try:
        arr = np.load(final, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def _build_once(entry: Path, final: Path, shape: tuple[int, ...], build: Callable[[_BuildLock], None],
                progress: bool) -> np.ndarray:
    """The entry's pixels: built here if no one else is building them, else waited for."""
    entry.mkdir(parents=True, exist_ok=True)
    lock, watch = _BuildLock(entry / LOCK_FILE), _LockWatch()
    delay, waited, told = 0.02, time.monotonic(), False
    while True:
        arr = _complete(final, shape)
        if arr is not None:
            return arr
        if lock.acquire():
            try:
                arr = _complete(final, shape)  # finished between our look and our lock
                if arr is not None:
                    return arr
                remove_stale_temps(entry)  # a dead builder's half-written pixels (GBs for ImageNet)
                build(lock)
            finally:
                lock.release()
            return np.load(final, mmap_mode="r")
        state = _lock_state(lock.path)
        if state is None:  # released this instant: look again
            continue
        raw, sig, holder = state
        if watch.abandoned(sig, holder):
            _break_lock(lock.path, raw)
            continue
        if not told and (progress or time.monotonic() - waited > 10):
            print(f"evalkit: waiting for {holder.get('host', '?')} pid {holder.get('pid', '?')} to finish decoding "
                  f"{entry} (lock {lock.path})", file=sys.stderr, flush=True)
            told = True
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


def decoded_images(
    source: ImageSource,
    cfg: PreprocessCfg,
    cache_dir: Path | None = None,
    num_workers: int | None = None,
    progress: bool = False,
    before_decode: Callable[[], None] | None = None,
    required: bool = False,
) -> np.ndarray:
    """uint8 [N, 3, S, S] pixels of `source`: read from the cache, or decoded (and cached) now.

    With `cache_dir=None` the pixels are decoded into memory and not kept. If another process or
    host is decoding the same entry, this waits for it and reads its result instead of decoding too.
    `num_workers` defaults to the CPUs this process may use (its affinity), at most 8.
    `before_decode` is called only when images are about to be decoded here: the engine lets its
    background threads finish then, so decode workers can be forked (cheap, no `__main__` guard).
    A cache disk that refuses the entry (full, quota, read-only) is a warning, once per cache folder,
    and the pixels are decoded into memory as with `cache_dir=None`; with `required` (building the
    cache is the point) it is a `CacheWriteError` instead.
    """
    if num_workers is None:
        num_workers = min(8, available_cpus())
    shape = (len(source), 3, cfg.size, cfg.size)
    if cache_dir is None:
        return _decode_in_memory(source, cfg, shape, num_workers, progress, before_decode)
    entry = entry_dir(source, cfg, Path(cache_dir))
    final = entry / "pixels.npy"
    arr = _complete(final, shape)
    if arr is not None:
        return arr
    build = _entry_builder(source, cfg, entry, final, shape, num_workers, progress, before_decode)
    try:
        with _cache_writes(entry):
            return _build_once(entry, final, shape, build, progress)
    except CacheWriteError as e:
        if required:
            raise
        err = e
    WARNINGS.warn(log, f"cache-disk:{Path(cache_dir).resolve()}", "evalkit: warning: %s: cannot write the image "
                  "cache (%s); running uncached: images are decoded into memory, again in every run. Free space "
                  "there or point --cache-dir at another folder (--no-cache runs uncached without this warning).",
                  err.filename, disk_problem(err))
    return _decode_in_memory(source, cfg, shape, num_workers, progress, before_decode)


def _decode_in_memory(source: ImageSource, cfg: PreprocessCfg, shape: tuple[int, ...], num_workers: int,
                      progress: bool, before_decode: Callable[[], None] | None) -> np.ndarray:
    arr = np.empty(shape, dtype=np.uint8)
    if before_decode is not None:
        before_decode()
    decode_all(source, cfg, arr, num_workers, progress)
    return arr


def _entry_builder(source: ImageSource, cfg: PreprocessCfg, entry: Path, final: Path, shape: tuple[int, ...],
                   num_workers: int, progress: bool, before_decode: Callable[[], None] | None
                   ) -> Callable[[_BuildLock], None]:
    """What the lock holder runs: assemble a complete set of pieces if there is one, else decode it all."""

    def build(lock: _BuildLock) -> None:
        count = complete_pieces(entry, shape)

        def fill(tmp: Path) -> None:
            arr = _reserved_memmap(tmp, shape)
            if count is not None:  # the same bytes a single build writes: same header, same pixels
                start = 0
                for i in range(count):
                    piece = np.load(_piece_path(entry, i, count), mmap_mode="r")
                    arr[start : start + len(piece)] = piece
                    start += len(piece)
                    lock.beat()
            else:
                if before_decode is not None:
                    before_decode()
                decode_all(source, cfg, arr, num_workers, progress, on_batch=lock.beat)
            lock.beat(force=True)
            arr.flush()
            del arr
            lock.beat(force=True)

        t0 = time.time()
        atomic_write(final, fill)
        meta = {"source": source.name, "n": len(source), "pixel_key": cfg.pixel_key, "fingerprint": source.fingerprint,
                "build_s": round(time.time() - t0, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "built_by": f"{HOST} pid {os.getpid()}"}
        if count is not None:
            meta["assembled_from"] = f"{count} pieces"
        try:
            atomic_write_text(entry / "meta.json", json.dumps(meta, indent=1))
        except OSError:  # an entry without its meta.json is invisible to `cache ls` and `cache rm`: none at all
            final.unlink(missing_ok=True)
            raise
        if count is not None:  # the pieces are a second copy of the pixels (GBs for ImageNet)
            shutil.rmtree(entry / PIECES_DIR, ignore_errors=True)

    return build


# --- the cache built in pieces: `evalkit cache build --shard i/n`, one piece per process or array task ---


def piece_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """Images [start, stop) of piece `index` of `count`: [i*N/n, (i+1)*N/n)."""
    if not 0 <= index < count:
        raise UsageError(f"piece {index} of {count}: need 0 <= index < count (from --shard i/n, or RANK/WORLD_SIZE "
                         "or SLURM_PROCID/SLURM_NTASKS in the environment)")
    return index * total // count, (index + 1) * total // count


def _piece_path(entry: Path, index: int, count: int) -> Path:
    return entry / PIECES_DIR / f"{index}-of-{count}.npy"


def complete_pieces(entry: Path, shape: tuple[int, ...]) -> int | None:
    """The n of a complete set of pieces `<entry>/pieces/<i>-of-<n>.npy` (every i, right shapes); None if none."""
    counts = set()
    for p in (entry / PIECES_DIR).glob("*-of-*.npy"):
        try:
            counts.add(int(p.stem.split("-of-")[1]))
        except ValueError:
            continue
    for n in sorted(counts):
        ok = True
        for i in range(n):
            start, stop = piece_bounds(shape[0], i, n)
            if _complete(_piece_path(entry, i, n), (stop - start, *shape[1:])) is None:
                ok = False
                break
        if ok:
            return n
    return None


class _Offset:
    """Image i of a piece is image start+i of the source (picklable, for the decode workers)."""

    def __init__(self, opener: Callable, start: int) -> None:
        self.opener, self.start = opener, start

    def __call__(self, i: int):
        return self.opener(self.start + i)


def build_piece(source: ImageSource, cfg: PreprocessCfg, cache_dir: Path, shard: tuple[int, int],
                num_workers: int | None = None, progress: bool = False) -> Path | None:
    """Decode piece `i` of `n` (images [i*N/n, (i+1)*N/n)) into `<entry>/pieces/<i>-of-<n>.npy`, atomically.

    Skipped when that piece is already complete or the entry's final `pixels.npy` exists (returns
    None then). A piece killed mid-write leaves only a private temp folder, removed by the next build.
    `assemble` then joins a complete set into the entry, byte-identical to a single-process build.
    """
    index, count = shard
    if num_workers is None:
        num_workers = min(8, available_cpus())
    shape = (len(source), 3, cfg.size, cfg.size)
    entry = entry_dir(source, cfg, Path(cache_dir))
    if _complete(entry / "pixels.npy", shape) is not None:
        return None
    start, stop = piece_bounds(len(source), index, count)
    path = _piece_path(entry, index, count)
    piece_shape = (stop - start, *shape[1:])
    if _complete(path, piece_shape) is not None:
        return path
    part = dataclasses.replace(source, ids=list(source.ids[start:stop]), opener=_Offset(source.opener, start),
                               targets=[], meta={}, classnames=None, templates=None)

    def fill(tmp: Path) -> None:
        arr = _reserved_memmap(tmp, piece_shape)
        if len(part):
            decode_all(part, cfg, arr, num_workers, progress)
        arr.flush()
        del arr

    with _cache_writes(path.parent):  # a piece is the cache itself: a disk that refuses it is an error
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)  # a killed piece builder's half-written pixels
        return atomic_write(path, fill)


def assemble(source: ImageSource, cfg: PreprocessCfg, cache_dir: Path, progress: bool = False) -> np.ndarray | None:
    """The entry's pixels, joined from a complete set of pieces if the final file is missing; None
    while the pieces are incomplete. One process joins (the entry's build lock); others wait for it."""
    shape = (len(source), 3, cfg.size, cfg.size)
    entry = entry_dir(source, cfg, Path(cache_dir))
    final = entry / "pixels.npy"
    arr = _complete(final, shape)
    if arr is not None:
        return arr
    if complete_pieces(entry, shape) is None:
        return None
    build = _entry_builder(source, cfg, entry, final, shape, 0, progress, None)
    with _cache_writes(entry):
        return _build_once(entry, final, shape, build, progress)


def host_batches(pixels: np.ndarray, batch_size: int, pin: bool = False, workers: int | None = None,
                 depth: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, uint8 batch) over `pixels` in order, read ahead by background threads.

    Copying out of the memory-mapped cache (straight into pinned memory when `pin`) releases the
    GIL, so the next batches are read while the device computes this one; with `pin`, the caller's
    `.to(device, non_blocking=True)` is a true async copy. By default a GPU (`pin`) gets up to 4
    readers, since it eats batches faster than one memcpy thread; a CPU run gets one.
    """
    if workers is None:
        workers = min(4, available_cpus()) if pin else 1
    if depth is None:
        depth = workers + 2
    def read(start: int) -> tuple[int, int, torch.Tensor]:
        stop = min(start + batch_size, len(pixels))
        if pin:
            out = torch.empty((stop - start, *pixels.shape[1:]), dtype=torch.uint8, pin_memory=True)
            out.numpy()[:] = pixels[start:stop]
        else:
            out = torch.from_numpy(np.array(pixels[start:stop]))
        return start, stop, out

    starts = list(range(0, len(pixels), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="evalkit-pixels") as pool:
        ahead = deque(pool.submit(read, s) for s in starts[:depth])
        for i in range(len(starts)):
            item = ahead.popleft().result()
            if i + depth < len(starts):
                ahead.append(pool.submit(read, starts[i + depth]))
            yield item


def list_entries(cache_dir: Path | None = None) -> list[dict]:
    cache_dir = Path(cache_dir or default_cache_dir())
    out = []
    for meta in sorted(cache_dir.glob("*/meta.json")):
        info = json.loads(meta.read_text())
        size = sum(p.stat().st_size for p in meta.parent.glob("*") if p.is_file())
        out.append({"entry": meta.parent.name, "bytes": size, **info})
    return out


def remove_entries(cache_dir: Path | None = None, match: str = "") -> int:
    cache_dir = Path(cache_dir or default_cache_dir())
    n = 0
    for e in list_entries(cache_dir):
        if match in e["entry"] or match in e.get("source", ""):
            shutil.rmtree(cache_dir / e["entry"], ignore_errors=True)
            n += 1
    return n
