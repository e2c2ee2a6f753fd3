"""Batches on a Ray cluster: the work of :func:`faceclip.batch.run_batch` with ``backend="ray"``.

:func:`run_on_ray` runs one function over a list of items on Ray **actors**: each actor makes
its state once (for a batch, loads the models: :class:`~faceclip.reconstruction.Reconstructor`)
and then takes one item at a time, as the local worker processes do. This process hands the
next item to whichever actor is free and gets every result back as it completes (the batch
writes its manifest from there), so one slow photo never holds up the others.

Why actors and not Ray Data: the per-photo work writes its own files and returns a small
report, which needs no dataset machinery; actors keep the models loaded between photos; an
actor that dies (killed, out of memory) fails only the photo it was working on and is
replaced; and the minimal ``ray`` package suffices (Ray Data would add pyarrow and pandas).

Where it runs:

- ``address=None``: the Ray connection this process already has (``ray.init`` called by the
  caller), else a new local Ray instance with ``local_cpus`` CPUs (no dashboard), shut down at
  the end.
- ``address="HEAD:6379"`` (or ``"auto"``, ``"ray://HEAD:10001"``): that cluster. It is checked
  to answer first, so a wrong address fails at once with a clear message instead of Ray's long
  retries.

Each actor reserves ``threads`` CPUs and uses as many torch threads: the cluster's CPUs divided
by the number of actors, at most what one node has (:func:`plan_actors`); a local instance
made here has the local worker pool's layout (``cores // workers`` threads each), so its
results equal the local backend's.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any

from faceclip.errors import FaceClipError

__all__ = ["INSTALL_HINT", "WorkerLost", "check_ray", "plan_actors", "run_on_ray"]

log = logging.getLogger(__name__)

#: How to install Ray into the project's environment.
INSTALL_HINT = ('install it: .venv/bin/pip install -c constraints.txt -e ".[ray]" (or install requirements-test.lock, '
                "which pins ray with hashes)")
#: Seconds to wait for a cluster's address to answer.
CONNECT_TIMEOUT_S = 10.0
#: The port of a Ray head node's GCS when the address gives none.
DEFAULT_PORT = 6379


class WorkerLost(Exception):
    """An actor died while working on an item (the item's result, passed to ``on_result``)."""


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise FaceClipError("--backend ray needs Ray, which is not installed", hint=INSTALL_HINT) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """The host and port that ``address`` names (None for ``auto`` / ``local``)."""
    if address in ("auto", "local"):
        return None
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    try:
        return host.strip("[]"), int(port) if port else DEFAULT_PORT
    except ValueError:
        raise FaceClipError(f"--address {address}: not HOST:PORT", hint="e.g. --address 10.0.0.1:6379") from None


def check_ray(address: str | None) -> None:
    """Raise a clear :class:`~faceclip.errors.FaceClipError` when Ray is missing or nothing
    answers at ``address`` (within :data:`CONNECT_TIMEOUT_S`)."""
    _import_ray()
    target = _host_port(address) if address is not None else None
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise FaceClipError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})",
                            hint="start one with `ray start --head` on the head node and give its HOST:6379, "
                                 "or drop --address to start a local Ray instance") from None


def plan_actors(workers: int, node_cpus: list[int]) -> tuple[int, int]:
    """``(actors, threads per actor)`` for ``workers`` actors on nodes with ``node_cpus`` CPUs.

    Threads: the most that lets ``workers`` actors fit on the nodes (an actor runs on one
    node), at most the cluster's CPUs divided by ``workers``; actors: ``workers``, or, when
    there are more workers than CPUs, one per CPU.

    Raises:
        FaceClipError: the cluster has no CPUs.
    """
    cpus = [c for c in node_cpus if c >= 1]
    if not cpus:
        raise FaceClipError("the Ray cluster has no CPUs to run on")

    def fit(threads: int) -> int:
        return sum(c // threads for c in cpus)

    threads = max(1, min(sum(cpus) // workers, max(cpus)))
    while threads > 1 and fit(threads) < workers:
        threads -= 1
    return min(workers, fit(threads)), threads


class _Actor:
    """A Ray actor's work: the state is made once, then one item per :meth:`run` call.

    A failure to make the state (a missing model) is kept and raised by every call, so the
    caller sees the original error (an actor whose constructor raises would just die).
    """

    def __init__(self, make_state: Callable[[int], Any], work: Callable[[Any, Any], Any], threads: int) -> None:
        self.work = work
        self.error: BaseException | None = None
        try:
            self.state = make_state(threads)
        except Exception as exc:  # noqa: BLE001 - raised again by run(), reported by the driver
            self.state, self.error = None, exc

    def run(self, item: Any) -> Any:
        if self.error is not None:
            raise self.error
        return self.work(self.state, item)


def _connect(ray: ModuleType, address: str | None, local_cpus: int) -> bool:
    """Connect to Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        if address is not None:
            log.warning("this process is already connected to Ray: --address %s is not used", address)
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        kwargs.update(address="local", num_cpus=local_cpus)
    else:
        kwargs.update(address=address)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; all mean 'no cluster to use'
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "check that the cluster runs the same Ray and Python versions as this computer" if address else None
        raise FaceClipError(f"cannot connect to {where}: {why}", hint=hint) from None
    return True


def _node_cpus(ray: ModuleType) -> list[int]:
    return [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def run_on_ray(items: list, make_state: Callable[[int], Any], work: Callable[[Any, Any], Any],
               on_result: Callable[[Any, Any], None], *, workers: int, address: str | None = None,
               local_cpus: int = 1) -> None:
    """Run ``work(state, item)`` for every item on Ray actors; results come back as they complete.

    Args:
        items: the work, handed out in order to whichever actor is free.
        make_state: ``make_state(threads)``, called once in each actor (``threads``: CPUs it has).
        work: ``work(state, item) -> result``, in an actor; both functions must be importable
            by name on every node (module-level functions of an installed package).
        on_result: ``on_result(item, result)`` in this process as each item completes; ``result``
            is a :class:`WorkerLost` when the actor died (it is replaced by a new one).
        workers: actors (fewer when the cluster is too small, see :func:`plan_actors`).
        address: the cluster; None: this process's Ray connection, or a new local instance.
        local_cpus: CPUs of a local instance started here.

    Raises:
        FaceClipError: Ray is missing, the cluster cannot be reached, or making the state failed
            (the original error, e.g. a model not installed).
    """
    ray = _import_ray()
    started = _connect(ray, address, local_cpus)
    actors: list = []
    try:
        n, threads = plan_actors(workers, _node_cpus(ray))
        if n < workers:
            log.warning("the Ray cluster fits %d workers of %d threads, not %d", n, threads, workers)
        actor_class = ray.remote(num_cpus=threads, max_restarts=0)(_Actor)

        def new_actor():
            actors.append(actor_class.remote(make_state, work, threads))
            return actors[-1]

        _drive(ray, [new_actor() for _ in range(min(n, len(items)))], items, on_result, new_actor)
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()


def _drive(ray: ModuleType, idle: list, items: list, on_result: Callable[[Any, Any], None],
           new_actor: Callable[[], Any]) -> None:
    """Keep every actor busy with one item until all items are done."""
    from ray.exceptions import RayActorError, RayTaskError

    queue = deque(items)
    running: dict = {}  # object ref -> (actor, item)
    while queue or running:
        while queue and idle:
            actor, item = idle.pop(), queue.popleft()
            running[actor.run.remote(item)] = (actor, item)
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            actor, item = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as exc:  # the state could not be made, or a bug: stop with the original error
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                raise cause from None
            except RayActorError as exc:  # killed, out of memory, its node lost
                log.debug("Ray actor died", exc_info=True)
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                result = WorkerLost(f"a Ray worker died ({type(exc).__name__}{': ' + first if first else ''})")
                actor = new_actor()
            on_result(item, result)
            idle.append(actor)
