"""The CPU a local Ray instance's own processes take while idle (issue 29: is it Ray's daemons that slow `--ray`'s
runs?). Starts Ray as `bench --study` does, waits 8 s, then prints each child process's share of a core over 20 s.

    python scripts/ray_idle_cpu.py
"""
import time

import psutil
import ray


def cpu(process):
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:  # a process that ended meanwhile
        return None


def main(settle: float = 8.0, span: float = 20.0) -> None:
    start = time.perf_counter()
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    print(f"ray.init: {time.perf_counter() - start:.2f} s")
    time.sleep(settle)
    me = psutil.Process()
    children = me.children(recursive=True)
    before, driver = {p.pid: cpu(p) for p in children}, cpu(me)
    begun = time.perf_counter()
    time.sleep(span)
    seconds, total = time.perf_counter() - begun, 0.0
    for p in children:
        now = cpu(p)
        if now is None or before[p.pid] is None:
            continue
        total += now - before[p.pid]
        print(f"{(now - before[p.pid]) / seconds:6.3f} cores  {p.name()[:30]}")
    print(f"all Ray processes: {total / seconds:.3f} cores; this driver {(cpu(me) - driver) / seconds:.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
