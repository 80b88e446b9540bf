"""Counts the user records of a stream with kcl-rs, for the fan-out bench.

The bench (``crates/rkcl-cli/benches/fanout.rs``) runs this script in a
virtual environment of its own with ``kcl-rs`` installed, one process per
run:

    python kcl_rs_consumer.py --stream S --app A --expected N --mode FANOUT

The region, the static credentials and the endpoints come from the standard
AWS environment variables the bench sets (``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_KINESIS``,
``AWS_ENDPOINT_URL_DYNAMODB``). The processor counts records and does nothing
else: no checkpoint but the one a finished shard requires.

Lines on stdout, each flushed at once, with the seconds since the scheduler
was started:

    first SECONDS          the first records arrived
    done COUNT SECONDS     at least the expected number of records arrived
    timeout COUNT SECONDS  they did not arrive in time (exit code 1)

After ``done`` the script waits for a line (or the end of input) on stdin, so
the bench can read this process' CPU time and memory while it still runs,
then shuts the scheduler down and exits.
"""

import argparse
import os
import sys
import threading
import time

from kcl_rs import RecordProcessorBase, Scheduler


class Tally:
    """The records seen by every shard's processor, under one lock."""

    def __init__(self, expected, started):
        self.expected = expected
        self.started = started
        self.count = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def add(self, records):
        with self.lock:
            if self.count == 0 and records:
                report("first", self.seconds())
            self.count += records
            if self.count >= self.expected:
                self.done.set()

    def seconds(self):
        return f"{time.monotonic() - self.started:.3f}"


def report(*fields):
    print(*fields, flush=True)


def processor_factory(tally):
    class Counting(RecordProcessorBase):
        def initialize(self, initialize_input):
            pass

        def process_records(self, process_records_input):
            tally.add(len(process_records_input.records))

        def lease_lost(self, lease_lost_input):
            pass

        def shard_ended(self, shard_ended_input):
            shard_ended_input.checkpointer.checkpoint()

        def shutdown_requested(self, shutdown_requested_input):
            pass

    return Counting


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--mode", choices=["FANOUT", "POLLING"], default="FANOUT")
    parser.add_argument("--shard-sync-interval-ms", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()

    started = time.monotonic()
    tally = Tally(args.expected, started)
    options = {}
    if args.shard_sync_interval_ms is not None:
        options["shard_sync_interval_millis"] = args.shard_sync_interval_ms
    scheduler = Scheduler(
        stream_name=args.stream,
        application_name=args.app,
        record_processor_factory=processor_factory(tally),
        worker_identifier=f"{args.app}-worker",
        region=os.environ["AWS_REGION"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        initial_position="TRIM_HORIZON",
        retrieval_mode=args.mode,
        **options,
    )
    scheduler.start()
    if tally.done.wait(args.timeout_s):
        with tally.lock:
            report("done", tally.count, tally.seconds())
        sys.stdin.readline()
        code = 0
    else:
        with tally.lock:
            report("timeout", tally.count, tally.seconds())
        code = 1
    scheduler.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
