"""Several processes sharing one extraction: ``accelerate launch`` or ``--processes N``.

Under a launcher every process runs the same command. ``features.extract`` then splits the
samples missing from the feature store into whole batches across processes (each sample goes
through the backbone in the same batch as in one process, so its features are the same bits);
each process writes its own shards; all wait; every process reads the full matrix back from the
store. One process (no launcher) takes none of these steps.

The process group is accelerate's (``PartialState``): no torch.distributed setup of our own.
"""
from __future__ import annotations

import os
import socket
import sys

# Set by torchrun (accelerate launch --multi_gpu) and by MPI launchers: a launcher started us.
_LAUNCH_VARS = ("LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched() -> bool:
    return any(v in os.environ for v in _LAUNCH_VARS) and int(os.environ.get("WORLD_SIZE", "2")) > 1


def state():
    """accelerate's ``PartialState`` (one per process, shared with any ``Accelerator``). Launched on a
    machine without a GPU, it is asked for CPU processes (gloo): accelerate's own ``--cpu`` launch
    starts a single process unless MPI is set up, so ``--multi_gpu`` is what starts N CPU processes."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched() and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def accelerator(precision: str = "no"):
    """An ``Accelerator`` at ``precision``. accelerate keeps one precision a process and refuses another
    ("AcceleratorState has already been initialized ... restart your runtime"): a notebook's second fit at
    another --precision then failed. Its state is reset first, as transformers' Trainer does; the process
    group (``PartialState``) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    state()  # first: launched on a machine without a GPU, CPU processes (alone, accelerate would see one)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    try:
        return Accelerator(mixed_precision=precision)
    except BaseException:  # refused half-made ("fp8" needs transformer_engine): no broken state for the next fit
        AcceleratorState._reset_state()
        raise


def close() -> None:
    """Destroy the process group a launched command made, while Python is still whole: left to the
    interpreter's exit, gloo's threads can die holding tensors ("terminate called without an active
    exception", SIGABRT, pytorch#190489). Called after a command succeeded: on an error another
    process may still be in a collective, and destroying the group could wait on it."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batch_share(todo: list[int], batch_size: int, st) -> list[int]:
    """This process's part of ``todo``: a contiguous run of whole batches, the same split on every
    process (``todo`` is the same everywhere)."""
    if st.num_processes == 1:
        return todo
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    with st.split_between_processes(batches) as mine:
        return [i for b in mine for i in b]


def split_map(fn, items: list, st) -> list:
    """``fn(items)`` computed in contiguous parts, one per process, and gathered in order on all."""
    if st.num_processes == 1:
        return fn(items)
    from accelerate.utils import gather_object
    with st.split_between_processes(items) as part:
        return gather_object(fn(part))


def gather(obj, st) -> list:
    """Every process's ``obj``, in process order, on every process."""
    if st.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object
    return gather_object([obj])


# -- --processes N: the command relaunches itself under accelerate's launcher ------------------------
def relaunch(n: int, argv: list[str] | None = None) -> int:
    """Run this ``rehead`` command again in ``n`` processes through ``accelerate launch`` (without
    ``--processes``); returns their exit status. One process per GPU; CPU processes (no GPU, or
    ACCELERATE_USE_CPU=true) get ``cores // n`` threads each."""
    argv = list(sys.argv[1:] if argv is None else argv)
    import torch
    from accelerate.utils import parse_flag_from_env
    gpus = 0 if parse_flag_from_env("ACCELERATE_USE_CPU") else torch.cuda.device_count()
    if gpus and n > gpus:
        raise ValueError(f"--processes {n} asks for more processes than the {gpus} GPU(s) here: "
                         f"give at most {gpus}, or set ACCELERATE_USE_CPU=true for CPU processes")
    threads = max(1, (os.cpu_count() or 1) // n)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", str(threads), "--main_process_port", str(_free_port()),
           "-m", "rehead", *strip_option(argv, "--processes")]
    env = dict(os.environ, **({} if gpus else {"ACCELERATE_USE_CPU": "true"}))
    import subprocess
    return subprocess.run(cmd, env=env).returncode


def strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def _free_port() -> int:
    """A port nobody listens on now: two relaunched commands at once must not share 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
