"""Running the scripts: user errors (bad config, unreadable image, divergence, no network), Ctrl-C
and environment faults (disk full, permissions) end in one line, never a traceback."""

from __future__ import annotations

import ctypes
import errno
import inspect
import logging as std_logging
import os
import pathlib
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable

from absl import app, flags, logging

from jaxcnn.config import load_config_module
from jaxcnn.errors import ConfigError, DistributedError, Interrupted, UserError, first_line

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


# Multi-host training (JAX's multi-controller model): every host runs the same command; these flags
# (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) call jax.distributed.initialize()
# before any computation. --distributed alone lets JAX detect Slurm, Open MPI or a TPU pod.
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "Multi-host: host:port of process 0 (all processes pass the same).")
flags.DEFINE_integer("num_processes", _env_int("JAX_NUM_PROCESSES"), "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", _env_int("JAX_PROCESS_ID"), "Multi-host: this process's id, 0..num_processes-1.")
flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() (cluster auto-detection "
                  "unless the flags above are given).")
flags.DEFINE_integer("initialization_timeout", 120, "Multi-host: seconds to wait for the coordinator and every "
                     "process to join; then each stops with one error line.")
flags.DEFINE_integer("heartbeat_timeout", 60, "Multi-host: seconds after which a process that stopped answering "
                     "counts as dead; the others then stop with one error line.")

_KEYS = "jaxcnn"  # our keys in the coordination service's key-value store
_POLL_S = 0.5
_RESUME = "rerun the same command on every process to resume from the last saved epoch"


class _Cluster:
    """This process's part in a multi-process run, after `jax.distributed.initialize`: launch checks over
    the coordinator's key-value store, and a watchdog thread that stops the process with one line when
    another one dies, hangs or fails (JAX's own runtime would abort with a C++ stack trace, or wait)."""

    def __init__(self, process_id: int, num_processes: int, address: str, heartbeat_s: int, timeout_s: int):
        from jax._src import distributed

        self.client = distributed.global_state.client
        self.pid, self.n, self.address = process_id, num_processes, address
        self.heartbeat_s, self.timeout_ms = heartbeat_s, timeout_s * 1000
        self.others = [p for p in range(num_processes) if p != process_id]
        self.ending = threading.Event()

    def _get(self, key: str) -> str:
        return self.client.blocking_key_value_get(f"{_KEYS}/{key}", self.timeout_ms)

    def check_launch(self) -> None:
        """Every process must have been given the same --num_processes as process 0."""
        self.client.key_value_set(f"{_KEYS}/num_processes/{self.pid}", str(self.n))
        for p in self.others if self.pid == 0 else [0]:
            theirs = int(self._get(f"num_processes/{p}"))
            if theirs != self.n:
                mine, other = sorted([(self.pid, self.n), (p, theirs)])
                raise DistributedError(f"the processes were started with different --num_processes: process "
                                       f"{mine[0]} with {mine[1]}, process {other[0]} with {other[1]}; give every "
                                       "process the same")

    def check_shared(self, workdir: str) -> None:
        """Process 0 writes a token file where the workdir is (its nearest existing folder); every other
        process must see it there: checkpoints and run files assume one file system for all."""
        folder = pathlib.Path(workdir).absolute()
        while not folder.is_dir():
            folder = folder.parent
        if self.pid == 0:
            name = f".jaxcnn-shared-check-{uuid.uuid4().hex}"
            (folder / name).write_text(f"written by process 0 of {self.n} on {socket.gethostname()}\n")
            self.client.key_value_set(f"{_KEYS}/token", name)
        try:
            name = self._get("token")
            seen = True
            if self.pid:
                deadline = time.monotonic() + 5  # a network file system may show a new file late
                while not (seen := (folder / name).exists()) and time.monotonic() < deadline:
                    time.sleep(0.2)
            self.client.key_value_set(f"{_KEYS}/shared/{self.pid}", f"{int(seen)} {socket.gethostname()}:{folder}")
            answers = {p: self._get(f"shared/{p}").split(" ", 1) for p in range(self.n)}
        finally:
            if self.pid == 0:
                (folder / name).unlink(missing_ok=True)
        blind = [f"process {p} ({where})" for p, (ok, where) in answers.items() if ok != "1"]
        if blind:
            raise DistributedError(f"--workdir {workdir} is not shared between the processes: process 0 wrote a file "
                                   f"into {answers[0][1]} that {', '.join(blind)} cannot see; put the workdir on a "
                                   "file system that every host mounts (NFS, Lustre, ...)")

    def start_watchdog(self) -> None:
        threading.Thread(target=self._watch, name="jaxcnn-watchdog", daemon=True).start()

    def _watch(self) -> None:
        beats = 0
        last = {p: (None, time.monotonic()) for p in self.others}
        while not self.ending.is_set():
            beats += 1
            try:
                self.client.key_value_set(f"{_KEYS}/alive/{self.pid}", str(beats), allow_overwrite=True)
                entries = dict(self.client.key_value_dir_get(f"{_KEYS}/"))
            except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
                self._die(f"lost the coordinator (process 0 at {self.address}): {first_line(e)}")
                return
            now = time.monotonic()
            for p in self.others:
                ended = entries.get(f"{_KEYS}/exit/{p}")
                if ended is not None:
                    if ended != "ok":
                        self._die(f"process {p} stopped: {ended}")
                    continue
                beat = entries.get(f"{_KEYS}/alive/{p}")
                if beat != last[p][0]:
                    last[p] = (beat, now)
                elif now - last[p][1] > self.heartbeat_s:
                    self._die(f"process {p} has not answered for {self.heartbeat_s} s (it died, was killed or "
                              "hangs; --heartbeat_timeout sets the wait)")
            time.sleep(_POLL_S)

    def _die(self, message: str) -> None:
        if self.ending.is_set():  # this process is ending anyway
            return
        line = f"process {self.pid} of {self.n} stops: {message}; {_RESUME}"
        if _say(f"error: {line}"):
            self.end(line, wait=False)
        os._exit(1)

    def end(self, outcome: str, wait: bool = True) -> None:
        """Tells the others how this process ends (`ok` or its error line) and stops the watchdog. Process 0,
        which serves the key-value store, waits (a few seconds at most) until the others have read it."""
        self.ending.set()
        try:
            self.client.key_value_set(f"{_KEYS}/exit/{self.pid}", outcome, allow_overwrite=True)
            if wait and self.pid == 0 and outcome != "ok":
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    ended = dict(self.client.key_value_dir_get(f"{_KEYS}/exit/"))
                    if all(f"{_KEYS}/exit/{p}" in ended for p in self.others):
                        break
                    time.sleep(0.1)
        except Exception:  # noqa: BLE001 - the coordinator is gone: nobody to tell
            pass


_cluster: _Cluster | None = None
_said = threading.Lock()  # held by the first thread that reports this process's end


def _say(line: str) -> bool:
    """Prints `line` to stderr if no other thread has reported how this process ends; whether it did."""
    if not _said.acquire(blocking=False):
        return False
    print(f"\n{line}", file=sys.stderr, flush=True)  # on a line of its own: a progress bar may be mid-line
    return True


def _check_launch_flags(coordinator_address: str, num_processes: int, process_id: int) -> tuple[str, int]:
    """(host, port) of a valid launch; ConfigError naming the bad value otherwise."""
    if num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes} is not valid: use 1 or more")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} is out of range for --num_processes={num_processes}: use "
                          f"0..{num_processes - 1}, a different one on each process")
    address = coordinator_address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator_address={address!r} is not valid: use HOST:PORT of process 0, "
                          "e.g. 10.0.0.1:1234")
    for name in ("initialization_timeout", "heartbeat_timeout"):
        if flags.FLAGS[name].value < 1:
            raise ConfigError(f"--{name}={flags.FLAGS[name].value} is not valid: use a number of seconds >= 1")
    return host.strip("[]"), int(port)


def _check_coordinator(host: str, port: int, process_id: int, timeout_s: int) -> None:
    """Process 0 serves the coordinator: its address must be this host's and the port free. The others wait
    (up to `timeout_s`) until it accepts connections; JAX itself would abort with a stack trace."""
    address = f"{host}:{port}"
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        raise DistributedError(f"--coordinator_address={address}: unknown host {host!r} ({e.strerror or e})") \
            from None
    if process_id == 0:
        with socket.socket(family) as s:
            try:
                s.bind((sockaddr[0], 0))
            except OSError:
                raise DistributedError(f"--coordinator_address={address} is not an address of this host: process 0 "
                                       "serves the coordinator, so give it process 0's own host:port") from None
        with socket.socket(socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError as e:
                raise DistributedError(f"--coordinator_address={address}: port {port} is not free on this host "
                                       f"({e.strerror or e}); choose another port") from None
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(sockaddr[:2], timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedError(f"cannot reach the coordinator at --coordinator_address={address} within "
                                       f"{timeout_s} s ({e.strerror or e}): give process 0's host:port and start "
                                       "process 0 (--initialization_timeout sets the wait)") from None
            time.sleep(0.5)


def initialize_distributed() -> None:
    """`jax.distributed.initialize(...)` when asked for by the flags, with launch checks that end in one
    line (bad values, unreachable coordinator, processes that do not join, different --num_processes, a
    workdir that is not shared) and a watchdog that stops this process when another one dies."""
    global _cluster
    f = flags.FLAGS
    given = {k: f[k].value for k in ("coordinator_address", "num_processes", "process_id")}
    if not f.distributed and all(v is None for v in given.values()):
        return
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = ", ".join(f"--{k}" for k, v in given.items() if v is None)
        raise ConfigError(f"multi-host launch needs --coordinator_address, --num_processes and --process_id "
                          f"together (or none, with --distributed on Slurm/Open MPI/TPU); missing: {missing}")
    timeout_s, heartbeat_s = f.initialization_timeout, f.heartbeat_timeout
    if given["coordinator_address"] is not None:
        host, port = _check_launch_flags(**given)
        _check_coordinator(host, port, given["process_id"], timeout_s)
    import jax
    from jax._src import distributed

    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):  # JAX's CPU collectives across processes
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's runtime aborts the process (LOG(FATAL), a C++ stack trace) when it cannot connect. With a callback
    # of ours the failure reaches Python instead: jaxlib cannot pass the status to a Python callable, so
    # Connect() raises. After connecting, `_Cluster`'s watchdog acts before JAX's heartbeat timeout (set longer).
    make_client = distributed._jax.get_distributed_runtime_client
    distributed._jax.get_distributed_runtime_client = (
        lambda *a, **kw: make_client(*a, missed_heartbeat_callback=_runtime_failed, **kw))
    try:
        try:
            jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None},
                                       initialization_timeout=timeout_s, heartbeat_timeout_seconds=2 * heartbeat_s + 10)
        except (RuntimeError, ValueError) as e:
            n, pid = given["num_processes"], given["process_id"]
            raise DistributedError(
                f"process {pid}: not all {n} processes joined within {timeout_s} s ({first_line(e)}): start every "
                f"process with the same --coordinator_address and --num_processes={n} and its own --process_id "
                f"0..{n - 1 if n else 'N-1'} (--initialization_timeout sets the wait)") from None
    finally:
        distributed._jax.get_distributed_runtime_client = make_client
    _cluster = _Cluster(jax.process_index(), given["num_processes"] or jax.process_count(),
                        distributed.global_state.coordinator_address,
                        heartbeat_s, timeout_s)
    _cluster.check_launch()
    if "workdir" in f and f.workdir:
        _cluster.check_shared(f.workdir)
    _report_runtime_failures()
    _cluster.start_watchdog()


def _runtime_failed(*args) -> None:
    """JAX's runtime lost the coordinator or the coordinator lost a process: one line, then exit. Called as
    the missed-heartbeat callback (should jaxlib ever pass it the status) or, as jaxlib 0.10 cannot, from
    `std::terminate` when the callback's call fails in the runtime's thread (`_on_terminate`)."""
    where = f"process {_cluster.pid} of {_cluster.n}" if _cluster else "this process"
    coordinator = f" at {_cluster.address}" if _cluster else ""
    detail = f": {args[0]}" if args else ""
    _say(f"error: {where} stops: the JAX distributed runtime lost the coordinator (process 0{coordinator}) or "
         f"another process{detail}; {_RESUME}")
    os._exit(1)


_on_terminate = ctypes.CFUNCTYPE(None)(_runtime_failed)  # a module global: the C++ runtime keeps calling it


def _report_runtime_failures() -> None:
    """Makes `std::terminate` (how the runtime's thread ends after the callback failed) print our one line."""
    try:
        ctypes.CDLL("libstdc++.so.6")._ZSt13set_terminatePFvvE(_on_terminate)
    except (OSError, AttributeError):  # another C++ runtime: JAX's own abort message stays
        pass


def _lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective or coordination call failing because another process is gone."""
    text = str(e)
    return _cluster is not None and any(s in text for s in ("Gloo", "Connection reset", "Connection closed",
                                                             "UNAVAILABLE", "DEADLINE_EXCEEDED"))


def _exit(line: str | None, code: int) -> None:
    """Ends the script with `line` (an error) or success; in a multi-process run tells the others first and,
    after an error, leaves at once (JAX's exit handler would wait for the other processes)."""
    if _cluster is None:
        if line is not None:
            print(line, file=sys.stderr, flush=True)
        distributed = sys.modules.get("jax._src.distributed")
        if line is not None and distributed is not None and distributed.global_state.client is not None:
            os._exit(code)  # a client that never connected: JAX's exit handler would print a traceback
        sys.exit(code)
    if line is not None and not _say(line):  # another thread reported the end first
        os._exit(code)
    _cluster.end("ok" if line is None else line.removeprefix("error: "))
    if line is None:
        return
    sys.stdout.flush()
    os._exit(code)


def _config_file_arg(argv: list[str]) -> str | None:
    """The file part of `--config FILE[:ARG]` / `--config=FILE[:ARG]` in argv, if any."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1].split(":", 1)[0]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        path = _config_file_arg(argv)
        if path:  # one line for a missing file, a syntax error or no get_config (absl prints a traceback)
            load_config_module(path)
        return flags.FLAGS(argv)
    except ConfigError as e:  # raised by a config file's get_config while the --config flag is parsed
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:  # a --config.a.b=v override naming no such key
        text = str(e.args[0]).replace("\\'", "'").replace("\\n", "\n")
        detail = "; ".join(line.strip().strip("'") for line in text.splitlines() if line.strip())
        sys.exit(f"error: a --config.KEY=VALUE override names no such key: {detail}")
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpshort or --helpfull to see help on flags.")


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's preemption, `kill`) stops a run like Ctrl-C: saved epochs kept, one line."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _quiet_library_echoes() -> None:
    """When one read or write of a checkpoint fails, Orbax closes its event loop while TensorStore
    still has reads or writes in flight: as they finish, their callbacks find the loop closed
    ("Event loop is closed"), the sibling coroutines are never awaited ("Exception ignored in:
    <coroutine ...>") and asyncio logs "exception was never retrieved", a traceback apiece. The
    failure itself is reported in one line; drop those echoes, and only those."""
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    default = sys.unraisablehook

    def hook(unraisable):
        echo = inspect.iscoroutine(unraisable.object) or (
            isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed")
        if not echo:
            default(unraisable)

    sys.unraisablehook = hook


def environment_error(e: OSError) -> str:
    """One line for an OSError: what failed on which file, and what to do."""
    if e.errno == errno.ENOSPC:
        where = f" at {e.filename}" if e.filename else ""
        return (f"disk full{where}: {e.strerror or e}; free space and rerun the same command "
                "(finished epochs are kept)")
    return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)


def run(main: Callable[[list[str]], None], positional: bool = False) -> None:
    """`absl.app.run(main)` with quiet Orbax logging and one-line errors for user mistakes, Ctrl-C
    and environment faults. `positional`: whether `main` takes arguments after the flags."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):  # absl's own --help exits with status 1
        app.usage(shorthelp="--helpfull" not in sys.argv, writeto_stdout=True, exitcode=0)

    def wrapped(argv: list[str]) -> None:
        logging.set_verbosity(logging.ERROR)  # Orbax logs every save at INFO and read-only opens at WARNING
        _stop_on_sigterm()
        _quiet_library_echoes()
        try:
            if len(argv) > 1 and not positional:
                raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
            initialize_distributed()
            main(argv)
        except UserError as e:
            _exit(f"error: {e}", getattr(e, "exit_code", 1))
        except KeyboardInterrupt:
            _exit(f"error: {Interrupted('interrupted; rerun the same command to resume')}", Interrupted.exit_code)
        except OSError as e:
            _exit(f"error: {environment_error(e)}", 1)
        except Exception as e:  # noqa: BLE001 - libraries (Orbax, TensorStore) wrap a full disk in their own types
            if _lost_peer(e):
                _exit(f"error: process {_cluster.pid} of {_cluster.n} stops: lost contact with another process "
                      f"({first_line(e)}): it stopped or was killed; {_RESUME}", 1)
            if "No space left on device" not in str(e):
                if _cluster is not None:
                    _cluster.end(f"crashed ({first_line(e)})")
                raise
            _exit(f"error: {environment_error(OSError(errno.ENOSPC, 'No space left on device'))} "
                  f"({type(e).__name__})", 1)
        _exit(None, 0)

    app.run(wrapped, flags_parser=_parse_flags)
