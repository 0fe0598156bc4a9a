"""``[core] hostname_callable`` of the test's Celery workers: two workers on one machine, told apart.

Airflow records the hostname a task ran on in ``task_instance.hostname``; both test workers run on
this machine, so each is given its own name in its environment.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """The worker's name from ``SENSEI_TEST_WORKER_HOSTNAME`` (this machine's name without it)."""
    return os.environ.get("SENSEI_TEST_WORKER_HOSTNAME") or socket.getfqdn()
