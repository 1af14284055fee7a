"""Ctrl-C belongs to the command, not to its local Dask workers.

Local workers share the terminal's process group, so Ctrl-C reaches each of them too, and
each one dies printing its own KeyboardInterrupt traceback. Loaded into every local worker
as a Dask preload (`emsr` sets `distributed.worker.preload`), this module makes workers ignore
SIGINT; the command still receives it, stops, and closes the cluster, which ends the workers.
"""

import signal
import threading

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
