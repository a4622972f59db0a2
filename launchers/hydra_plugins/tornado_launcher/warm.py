"""Warm worker: a process that imports heavy libraries once (torch, Lightning), then forks one child per job.

Each job is still its own process and runs exactly as `python -m <module> <args>` would: the module, and the
project's own modules it imports, are loaded afresh in the child, so a job always runs the code on disk.
Only the preloaded libraries, which take seconds to import, are shared. Nothing touches CUDA before the
fork, so each child still picks its own GPUs.

    python -m hydra_plugins.tornado_launcher.warm <module> [<preloaded module> ...]
Protocol on stdin/stdout, one JSON line each: job {"args": [...], "env": {...}, "log": path}
-> {"pid": n} once it started -> {"rc": n} when it ended (-N: killed by signal N).
"""
import importlib
import json
import logging
import os
import runpy
import sys
import traceback


def _child(module: str, job: dict) -> None:
    os.setsid()  # its own process group: the launcher stops DDP ranks with it
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(job["env"])
    sys.argv = [module, *job["args"]]  # run_module puts the module's file in argv[0], as `python -m` does
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve(module: str, preload: list) -> None:
    from tornado.errors import die_with_parent

    die_with_parent()  # and its job with it (the job sets the same on itself)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as e:  # there (the launcher found it) but broken: the jobs import it themselves
            why = str(e) if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
            print(f"warning: hydra.launcher.preload: {name}: not preloaded ({why})", file=sys.stderr, flush=True)
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(module, job)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
