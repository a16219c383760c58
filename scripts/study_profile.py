"""Where a `--jobs N` study spends its processes' time: cProfile in the main process and in every pool worker (its
initializer and each run apart), for reading the structure (who imports what, how often the data is loaded, which
runs each process took), not for timing on a busy machine.

    python scripts/study_profile.py OUT compare --strategies naive,si,ewc --seeds 2 --tasks 2 --epochs 1 --jobs 2 --quiet

Writes OUT/parent.prof, OUT/init-PID.prof (a worker's start) and OUT/call-PID-RUN.prof (run RUN in worker PID); read
them with `python -m pstats FILE` (sort cumulative, stats 30). The remaining arguments are a `clframework` command.
"""
import cProfile
import os
import sys

from clframework import parallel

OUT = os.environ.get("STUDY_PROFILE_OUT", "")
_init_worker = parallel._init_worker


def profiled_init(*args):
    """The pool's initializer, profiled; then each run in this worker is profiled on its own."""
    profile = cProfile.Profile()
    profile.runcall(_init_worker, *args)
    profile.dump_stats(os.path.join(OUT, f"init-{os.getpid()}.prof"))
    call = parallel._call

    def profiled_call(fn, payload, index, folder):
        run = cProfile.Profile()
        try:
            return run.runcall(call, fn, payload, index, folder)
        finally:
            run.dump_stats(os.path.join(OUT, f"call-{os.getpid()}-{index}.prof"))

    parallel._call = profiled_call


if __name__ == "__main__":
    OUT = os.environ["STUDY_PROFILE_OUT"] = os.path.abspath(sys.argv[1])  # the workers read it from their environment
    os.makedirs(OUT, exist_ok=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import study_profile  # spawned workers unpickle the initializer by its module's name: this one, not __main__

    parallel._init_worker = study_profile.profiled_init
    from clframework.apps.cli import main

    profile = cProfile.Profile()
    code = profile.runcall(main, sys.argv[2:])
    profile.dump_stats(os.path.join(OUT, "parent.prof"))
    sys.exit(code)
