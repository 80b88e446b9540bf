"""One kcl-rs worker for the peers benchmark (`run` starts it).

    python kcl_rs_worker.py --stream S --app A --worker W

The endpoints, region and static credentials come from the standard AWS
environment variables `run` sets. It reads in polling mode with kcl-rs'
defaults, except a shard sync every second (at its default of 60 s a new
application's first sync waits a whole minute). The processor only counts:
each batch is one line `R SHARD COUNT` on stdout, flushed at once; a
finished shard is checkpointed, nothing else is. SIGTERM shuts the
scheduler down (its graceful shutdown) and exits.
"""

import argparse
import os
import signal
import sys
import threading

from kcl_rs import RecordProcessorBase, Scheduler

OUT_LOCK = threading.Lock()


def report(line):
    with OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Counting(RecordProcessorBase):
    def initialize(self, initialize_input):
        self.shard = initialize_input.shard_id or "?"

    def process_records(self, process_records_input):
        n = len(process_records_input.records)
        if n:
            report(f"R {self.shard} {n}")

    def lease_lost(self, lease_lost_input):
        pass

    def shard_ended(self, shard_ended_input):
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--worker", required=True)
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler = Scheduler(
        stream_name=args.stream,
        application_name=args.app,
        record_processor_factory=Counting,
        worker_identifier=args.worker,
        region=os.environ["AWS_REGION"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        initial_position="TRIM_HORIZON",
        retrieval_mode="POLLING",
        shard_sync_interval_millis=1000,
    )
    scheduler.start()
    while not stop.wait(0.2):
        pass
    scheduler.shutdown()


if __name__ == "__main__":
    main()
