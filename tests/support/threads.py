"""Threads released together: the concurrency tests' one way to start clients at once."""
import threading


def run_together(work, jobs, timeout=30):
    """`work(job)` for each of `jobs`, each in a thread of its own, all released at once by a
    barrier; waits for every thread. Returns what they raised, as repr strings (a surfaced
    deadlock or any bug fails the caller's `assert errors == []`)."""
    start = threading.Barrier(len(jobs))
    errors = []

    def run(job):
        try:
            start.wait(timeout)
            work(job)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
