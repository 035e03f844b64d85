import os, signal, time, logging
from distributed import LocalCluster, Client
def main():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, Client(c) as cl:
        for i in range(6):
            before = set(cl.scheduler_info()["workers"])
            pids = cl.run(os.getpid)
            w = sorted(pids)[0]
            os.kill(pids[w], signal.SIGKILL)
            t = time.time()
            while True:
                now = set(cl.scheduler_info()["workers"])
                if len(now) == 2 and now != before: break
                if time.time() - t > 30: print("no restart", now); break
                time.sleep(0.05)
            print(i, "restart took", round(time.time() - t, 2), flush=True)
            # kill the new one right away
        print([ (n, w.status) for n, w in c.workers.items()])
if __name__ == "__main__":
    main()
