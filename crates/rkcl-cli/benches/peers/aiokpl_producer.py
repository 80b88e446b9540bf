"""Writes N user records of a fixed size with aiokpl, for the producer bench.

The bench (``crates/rkcl-cli/benches/producer.rs``) runs this script in a
virtual environment of its own with ``aiokpl`` installed, one process per
run:

    python aiokpl_producer.py --endpoint URL --stream S --records N \
        --size BYTES [--no-aggregate]

The region and the static credentials come from the standard AWS
environment variables the bench sets (``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``). aiokpl keeps its
defaults (100 ms ``record_max_buffered_time_ms``, per-shard rate limits at
1,000 records/s and 1 MiB/s, 100,000 outstanding records) but for
aggregation, which ``--no-aggregate`` turns off.

Several tasks put the records (partition key: the record's index in
decimal) and keep each record's ``Outcome``. One record in
``--sample-every`` gets a task that waits for its outcome and notes the time
from ``put_record`` to then: the put-to-receipt latency.

Lines on stdout, each flushed at once:

    first                       the first record is about to be put
    done COUNT SECONDS P50 P99  every outcome is in: COUNT written, SECONDS
                                from the first put to the last outcome,
                                latency percentiles in milliseconds

After ``done`` the script waits for a line (or the end of input) on stdin,
so the bench can read this process' CPU time while it still runs. On the
way out aiokpl 0.2.0 logs a ``RuntimeError`` ("Attempted to exit cancel
scope in a different task"): its per-stream pipeline is entered by the
putting task that sent the first record. That is after ``done`` and does
not touch the figures.
"""

import argparse
import asyncio
import os
import sys
import time

from aiokpl import Config, Producer


def report(*fields):
    print(*fields, flush=True)


def percentile(values, q):
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[round((len(values) - 1) * q)]:.1f}"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--no-aggregate", action="store_true")
    args = parser.parse_args()

    config = Config(
        region=os.environ["AWS_REGION"],
        endpoint_url=args.endpoint,
        verify_ssl=False,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        aggregation_enabled=not args.no_aggregate,
    )
    payload = b"x" * args.size
    outcomes = []
    latencies = []
    samplers = []

    async def sample(outcome, put_at):
        await outcome.wait()
        latencies.append((time.monotonic() - put_at) * 1000.0)

    async with Producer(config) as producer:

        async def put_share(first):
            for index in range(first, args.records, args.tasks):
                put_at = time.monotonic()
                outcome = await producer.put_record(
                    stream=args.stream, partition_key=str(index), data=payload
                )
                outcomes.append(outcome)
                if index % args.sample_every == 0:
                    samplers.append(asyncio.ensure_future(sample(outcome, put_at)))

        report("first")
        started = time.monotonic()
        await asyncio.gather(*(put_share(first) for first in range(args.tasks)))
        written = 0
        for outcome in outcomes:
            try:
                result = await outcome.wait()
            except Exception:  # noqa: BLE001 - a failed record is counted as such
                continue
            if result.success:
                written += 1
        elapsed = time.monotonic() - started
        await asyncio.gather(*samplers)
        report(
            "done",
            written,
            f"{elapsed:.3f}",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
        )
        sys.stdin.readline()


if __name__ == "__main__":
    asyncio.run(main())
